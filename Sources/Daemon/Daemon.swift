// Daemon: the lorad server.
import Runtime
