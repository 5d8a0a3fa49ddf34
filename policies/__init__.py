"""Pure decision functions (no I/O) shared by the stream agents and the HTTP apps."""
