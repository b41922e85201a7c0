"""The tools around training, each reading run directories and studies: the budget planner, the sweep, the
report, and where studies are stored."""
