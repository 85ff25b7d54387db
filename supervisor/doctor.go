package supervisor

import (
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"loopmx/config"
)

// Doctor compares the running kernel's settings, the open-file limit and
// the config against what the config needs, prints what to change and
// why, and returns the exit code (0 when nothing needs changing). check
// runs what check-config checks (the plugins, the spool and who can
// write it, tls.ini); its error is the first finding.
func Doctor(cfg *config.Config, w io.Writer, check func() error) int {
	return hostMachine().doctor(cfg, w, check)
}

// machine is where the doctor reads the system from; tests fake it.
type machine struct {
	sysctl func(name string) (string, error) // "net.core.somaxconn" -> "4096"
	nofile func() (unix.Rlimit, error)
	lookup func(name string) (*user.User, error)
}

func hostMachine() machine {
	return machine{
		sysctl: func(name string) (string, error) {
			b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
			return strings.Join(strings.Fields(string(b)), " "), err
		},
		nofile: func() (unix.Rlimit, error) {
			var r unix.Rlimit
			err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r)
			return r, err
		},
		lookup: user.Lookup,
	}
}

// verdict is the result of one check.
type verdict uint8

const (
	vOK      verdict = iota
	vChange          // the setting is short of what the config needs
	vUnknown         // the value could not be read; not counted as a failure
)

func (v verdict) String() string {
	return [...]string{"OK", "CHANGE", "UNKNOWN"}[v]
}

// finding is one printed check.
type finding struct {
	verdict verdict
	what    string // "net.core.somaxconn = 128"
	need    string // "need >= 4096 (smtp.ini backlog)"
	why     string // printed for CHANGE
	fix     string // printed for CHANGE
}

// Needs derived from the config.
const (
	fdMargin        = 1024  // descriptors beyond connections: listeners, spool files, plugin sockets
	fdUnlimitedConn = 65536 // what to plan for when max_connections is 0 (unlimited)
	portRangeMin    = 16384 // local ports for connections to a next hop
)

func (m machine) doctor(cfg *config.Config, w io.Writer, check func() error) int {
	mc := cfg.Main
	workers := max(mc.Nodes, 1)
	perProc := fdUnlimitedConn
	connNote := "max_connections = 0 (unlimited): planning for 65536 connections per process"
	if mc.MaxConnections > 0 {
		perProc = mc.MaxConnections + fdMargin
		connNote = fmt.Sprintf("max_connections = %d per process + %d", mc.MaxConnections, fdMargin)
	}
	name := cfg.Dir
	if cfg.Embedded {
		name = "(embedded default)"
	}
	fmt.Fprintf(w, "loopmx doctor: config %s: nodes %d, sched_policy %s, backlog %d, max_connections %d\n\n",
		name, mc.Nodes, mc.SchedPolicy, mc.Backlog, mc.MaxConnections)

	var fs []finding
	if check != nil {
		fs = append(fs, configCheck(check()))
	}
	atLeast := func(key string, want int64, reason, why string) {
		fs = append(fs, m.sysctlAtLeast(key, want, reason, why))
	}
	atLeast("net.core.somaxconn", int64(mc.Backlog), "smtp.ini backlog",
		"listen(2) silently caps the accept queue at net.core.somaxconn; in a burst, connections beyond it have their SYN dropped and the client retries 1 s, 3 s, 7 s later, which is the slow banner senders see")
	atLeast("net.ipv4.tcp_max_syn_backlog", int64(mc.Backlog), "smtp.ini backlog",
		"half-open connections of a burst wait in the SYN queue; when it is full the kernel drops SYNs or falls back to syncookies")
	fs = append(fs, m.sysctlEquals("net.ipv4.tcp_syncookies", []string{"1", "2"}, "1",
		"an MX on the Internet sees SYN floods; syncookies keep the listener answering when the SYN queue overflows"))
	fs = append(fs, m.openFiles(int64(perProc), connNote))
	atLeast("fs.nr_open", int64(perProc), connNote,
		"no process can raise its open-file limit above fs.nr_open, whatever LimitNOFILE says")
	atLeast("fs.file-max", int64(perProc*workers), fmt.Sprintf("%d processes x %d descriptors", workers, perProc),
		"the whole system's open files; every worker holds one per connection")
	if mc.RecvBuffer > 0 {
		atLeast("net.core.rmem_max", int64(mc.RecvBuffer), "smtp.ini recv_buffer",
			"the kernel caps SO_RCVBUF at net.core.rmem_max, so a larger recv_buffer has no effect")
	}
	if mc.SendBuffer > 0 {
		atLeast("net.core.wmem_max", int64(mc.SendBuffer), "smtp.ini send_buffer",
			"the kernel caps SO_SNDBUF at net.core.wmem_max, so a larger send_buffer has no effect")
	}
	if mc.SchedPolicy == "reuseport" {
		fs = append(fs, m.sysctlEquals("net.ipv4.tcp_migrate_req", []string{"1"}, "1",
			"with sched_policy = reuseport each worker has its own accept queue; when a worker stops (restart, reload), Linux 5.14+ moves its queued connections to another worker only with tcp_migrate_req = 1, otherwise they are reset"))
	}
	if slices.ContainsFunc(cfg.Plugins, func(p string) bool {
		return p == "queue/smtp_forward" || p == "queue/lmtp"
	}) {
		fs = append(fs, m.portRange())
	}
	if mc.User != "" {
		fs = append(fs, m.userChecks(cfg)...)
	}

	changes := 0
	for _, f := range fs {
		fmt.Fprintf(w, "%-8s%s; %s\n", f.verdict, f.what, f.need)
		if f.verdict == vChange {
			changes++
			fmt.Fprintf(w, "        why: %s\n        fix: %s\n", f.why, f.fix)
		}
	}
	if changes == 0 {
		fmt.Fprintln(w, "\nnothing to change.")
		return 0
	}
	fmt.Fprintf(w, "\n%d setting(s) to change; contrib/sysctl.d/60-loopmx.conf and contrib/systemd/loopmx.service carry the values (docs/supervisor.md).\n", changes)
	return 1
}

func (m machine) sysctlInt(key string) (int64, string, error) {
	v, err := m.sysctl(key)
	if err != nil {
		return 0, "", err
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, v, err
}

func sysctlFix(key string, want string) string {
	return fmt.Sprintf("sysctl -w %s=%s, and put it in /etc/sysctl.d/60-loopmx.conf to keep it", key, want)
}

func (m machine) sysctlAtLeast(key string, want int64, reason, why string) finding {
	f := finding{need: fmt.Sprintf("need >= %d (%s)", want, reason), why: why, fix: sysctlFix(key, strconv.FormatInt(want, 10))}
	n, v, err := m.sysctlInt(key)
	switch {
	case err != nil:
		f.verdict, f.what = vUnknown, key+" cannot be read: "+err.Error()
	case n < want:
		f.verdict, f.what = vChange, key+" = "+v
	default:
		f.verdict, f.what = vOK, key+" = "+v
	}
	return f
}

func (m machine) sysctlEquals(key string, good []string, want, why string) finding {
	f := finding{need: "want " + strings.Join(good, " or "), why: why, fix: sysctlFix(key, want)}
	v, err := m.sysctl(key)
	switch {
	case err != nil && os.IsNotExist(err):
		f.verdict, f.what = vChange, key+" does not exist in this kernel"
		f.fix = "a newer kernel, or the setting it guards cannot be had"
	case err != nil:
		f.verdict, f.what = vUnknown, key+" cannot be read: "+err.Error()
	case slices.Contains(good, v):
		f.verdict, f.what = vOK, key+" = "+v
	default:
		f.verdict, f.what = vChange, key+" = "+v
	}
	return f
}

// openFiles checks RLIMIT_NOFILE. Go raises the soft limit to the hard one
// at start, so the hard limit is what a worker gets.
func (m machine) openFiles(want int64, reason string) finding {
	f := finding{
		need: fmt.Sprintf("need hard limit >= %d (%s)", want, reason),
		why:  "each connection is a descriptor; at the limit accept fails with EMFILE and new clients wait or are refused. This is the limit of the shell running doctor; under systemd, LimitNOFILE= in the unit decides",
		fix:  fmt.Sprintf("LimitNOFILE=%d in loopmx.service (contrib/systemd), or ulimit -Hn / limits.conf for a manual start", max(want, 1048576)),
	}
	r, err := m.nofile()
	if err != nil {
		f.verdict, f.what = vUnknown, "open files (RLIMIT_NOFILE) cannot be read: "+err.Error()
		return f
	}
	f.what = fmt.Sprintf("open files (RLIMIT_NOFILE) soft %d, hard %d", r.Cur, r.Max)
	f.verdict = vOK
	if int64(r.Max) < want && r.Max != unix.RLIM_INFINITY {
		f.verdict = vChange
	}
	return f
}

func (m machine) portRange() finding {
	const key = "net.ipv4.ip_local_port_range"
	f := finding{
		need: fmt.Sprintf("need a range of >= %d ports (queue plugin connects to a next hop)", portRangeMin),
		why:  "every open connection to the next hop (smtp_forward, lmtp) takes a local port; with few ports, connects fail with EADDRNOTAVAIL under load",
		fix:  sysctlFix(key, `"10240 65535"`),
	}
	v, err := m.sysctl(key)
	var lo, hi int
	if err == nil {
		_, err = fmt.Sscan(v, &lo, &hi)
	}
	switch {
	case err != nil:
		f.verdict, f.what = vUnknown, key+" cannot be read: "+err.Error()
	case hi-lo+1 < portRangeMin:
		f.verdict, f.what = vChange, key+" = "+v
	default:
		f.verdict, f.what = vOK, key+" = "+v
	}
	return f
}

// configCheck turns the outcome of check-config's checks into a finding.
func configCheck(err error) finding {
	f := finding{need: "the server checks the same at start"}
	if err == nil {
		f.verdict, f.what = vOK, "config: plugins, spool and its user, tls.ini as check-config checks them"
		return f
	}
	f.verdict, f.what = vChange, err.Error()
	f.why = "the server refuses to start with this error"
	f.fix = "what the error names (file, key, value); loopmx check-config -c DIR shows it alone"
	return f
}

// userChecks: the user of smtp.ini exists. Whether it can write the spool
// is the config check's (the maildir plugin checks it for that user).
func (m machine) userChecks(cfg *config.Config) []finding {
	name := cfg.Main.User
	u, err := m.lookup(name)
	if err != nil {
		return []finding{{
			verdict: vChange, what: "user " + name + " does not exist", need: "smtp.ini user",
			why: "a supervisor started as root runs its workers as this user; they cannot start without it",
			fix: "useradd --system --home-dir /var/spool/loopmx --shell /usr/sbin/nologin " + name,
		}}
	}
	return []finding{{verdict: vOK, what: "user " + name + " exists (uid " + u.Uid + ")", need: "smtp.ini user"}}
}
