"""The consumers topology: N consumer processes, each running its own tasks, under one parent."""
