// lorad: the daemon executable; everything lives in the Daemon library.
import Daemon

await LoradCommand.runAsMain()
