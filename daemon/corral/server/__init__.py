"""corrald: the socket, who may ask what, sessions, the audit log."""
