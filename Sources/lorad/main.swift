import Daemon
print("lorad")
