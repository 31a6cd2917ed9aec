"""The load suite: Locust customers, a chaos nemesis and the consistency checker (`make load`)."""
