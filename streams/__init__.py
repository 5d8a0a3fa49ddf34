"""Topics of the pipeline and the partitioning rule they share."""
