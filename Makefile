# loopmx: the two commands a new user needs are `make run` and `make test`.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build run test cross test-unit test-e2e vet fmt-check fuzz bench bench-compare bench-tls bench-scaleout bench-attrib bench-ab deps clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/loopmx .
	@if [ -d bench ] && ls bench/*.go >/dev/null 2>&1; then $(GO) build -trimpath -o bin/loopmx-bench ./bench; fi

# Runs the server in the foreground on the embedded default config:
# 127.0.0.1:2525, mail for localhost and example.com lands in ./var/spool/new.
run: build
	./bin/loopmx

# Installs what the tests need (swaks, postfix for smtp-source and the
# XCLIENT/XFORWARD test, redis-server, haproxy, rspamd, opendkim and
# opendkim-tools, promtool and prometheus) when missing and root can
# install it, then runs everything with -race. The Redis-using packages
# run a second time against a Redis Cluster of three masters
# (internal/redisx/redistest).
REDIS_PKGS = ./internal/redisx/... ./plugins/limit ./plugins/results ./plugins/greylist ./plugins/rcpt_to.valid ./plugins/rcpt_to.verify
test: deps vet fmt-check cross
	$(GO) test -race -count=1 -timeout 8m ./...
	LOOPMX_TEST_REDIS=cluster $(GO) test -race -count=1 -timeout 5m $(REDIS_PKGS)

deps:
	@missing=""; \
	command -v swaks >/dev/null 2>&1 || missing="$$missing swaks"; \
	[ -x /usr/sbin/smtp-source ] || missing="$$missing postfix"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
	command -v rspamd >/dev/null 2>&1 || missing="$$missing rspamd"; \
	[ -x /usr/sbin/opendkim ] || missing="$$missing opendkim"; \
	[ -x /usr/sbin/opendkim-genkey ] || missing="$$missing opendkim-tools"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	  else echo "note:$$missing not installed; tests that need them are skipped"; fi; \
	fi

# loopmx serves from epoll on Linux; on macOS and FreeBSD (development
# hosts) every connection runs on the goroutine transport. Both must build.
cross:
	GOOS=darwin $(GO) build -o /dev/null .
	GOOS=freebsd $(GO) build -o /dev/null .

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l . 2>/dev/null | grep -v '^bin/'); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# A short fuzz run of every parser (the corpus lives in testdata/).
fuzz:
	$(GO) test -run XXX -fuzz FuzzSession -fuzztime 30s ./smtpproto/

# The load test (docs/benchmarks.md). `make bench CONFIG=/etc/loopmx` (or
# BENCH_CONFIG=) runs it on a copy of an operator's own config directory:
# their plugins, their disk and fsync. The scripts use the bin/loopmx that
# build just made, with its version.
bench: build
	BENCH_CONFIG="$(or $(BENCH_CONFIG),$(CONFIG))" ./scripts/bench.sh

# loopmx against the peers of bench/peers and smtp-sink, as ratios.
bench-compare: build
	./scripts/bench-compare.sh

# The cost of a STARTTLS session against go-smtp (docs/tls.md).
bench-tls: build
	./scripts/bench-tls.sh

# Where a plain session's CPU goes, per thread and per kind of work,
# beside the C floor (docs/benchmarks.md).
bench-attrib: build
	./scripts/bench-attrib.sh

# Two builds (or loopmx and the floor) measured at the same time on one
# core: A=HEAD~1 B=. make bench-ab (docs/benchmarks.md).
bench-ab: build
	./scripts/bench-ab.sh

# Sessions/s through HAProxy to one loopmx host and to three, and what
# HAProxy itself costs (docs/scale-out.md).
bench-scaleout: build
	./scripts/bench-scaleout.sh

clean:
	rm -rf bin var
