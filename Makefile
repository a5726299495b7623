# Convenience targets around SwiftPM and the install script. `make install` needs root.
#   make build            swift build -c release (lorad and loractl)
#   make install          scripts/install.sh install   (PREFIX, DESTDIR, SYSCONFDIR, UNITDIR are passed on)
#   make uninstall        scripts/install.sh uninstall (PURGE=1 also removes config, state, user and group)
#   make verify-units     systemd-analyze verify on systemd/lorad.{socket,service} against the built binary
#   make systemd-e2e      scripts/systemd-e2e.sh: real systemd as PID 1 of its own PID namespace (root)

PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
UNITDIR ?= /etc/systemd/system
DESTDIR ?=
INSTALL_ENV = PREFIX="$(PREFIX)" SYSCONFDIR="$(SYSCONFDIR)" UNITDIR="$(UNITDIR)" DESTDIR="$(DESTDIR)"

.PHONY: build install uninstall verify-units systemd-e2e

build:
	swift build -c release --product lorad
	swift build -c release --product loractl

install:
	$(INSTALL_ENV) scripts/install.sh install

uninstall:
	$(INSTALL_ENV) scripts/install.sh uninstall

verify-units: build
	@set -e; dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	bin=$$(swift build -c release --show-bin-path); \
	cp systemd/lorad.socket systemd/lorad.service "$$dir/"; \
	sed -i "s|/usr/local/bin/lorad|$$bin/lorad|" "$$dir/lorad.service"; \
	cd "$$dir" && systemd-analyze verify ./lorad.socket ./lorad.service && echo "units verified"

systemd-e2e:
	LORAD_SYSTEMD_E2E=1 scripts/systemd-e2e.sh
