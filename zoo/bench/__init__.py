"""The benchmark harness: arm runner, statistics, reports, README sections and the suites."""
