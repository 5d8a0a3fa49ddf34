"""Topics of the pipeline, the partitioning rule they share, and the fixes to faust-streaming's partition hand-over (`faust_handover.py`)."""
