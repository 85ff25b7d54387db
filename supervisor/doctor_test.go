package supervisor

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"loopmx/config"
)

// fakeMachine answers from a map of sysctl values.
func fakeMachine(sysctl map[string]string, nofile uint64) machine {
	return machine{
		sysctl: func(name string) (string, error) {
			v, ok := sysctl[name]
			if !ok {
				return "", &os.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
			}
			if v == "EACCES" {
				return "", errors.New("permission denied")
			}
			return v, nil
		},
		nofile: func() (unix.Rlimit, error) { return unix.Rlimit{Cur: 1024, Max: nofile}, nil },
		lookup: func(name string) (*user.User, error) {
			if name == "loopmx" {
				return &user.User{Username: "loopmx", Uid: "990", Gid: "990"}, nil
			}
			return nil, user.UnknownUserError(name)
		},
	}
}

func goodSysctls() map[string]string {
	return map[string]string{
		"net.core.somaxconn":           "65535",
		"net.ipv4.tcp_max_syn_backlog": "65535",
		"net.ipv4.tcp_syncookies":      "1",
		"fs.nr_open":                   "1048576",
		"fs.file-max":                  "9223372036854775807",
		"net.core.rmem_max":            "16777216",
		"net.core.wmem_max":            "16777216",
		"net.ipv4.tcp_migrate_req":     "1",
		"net.ipv4.ip_local_port_range": "10240 65535",
	}
}

func doctorConfig(t *testing.T, files map[string]string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func runDoctor(m machine, cfg *config.Config) (string, int) {
	var b strings.Builder
	code := m.doctor(cfg, &b, func() error { return nil })
	return b.String(), code
}

func TestDoctorAllGood(t *testing.T) {
	cfg := doctorConfig(t, map[string]string{"smtp.ini": "me = mx.example\nnodes = 4\nrecv_buffer = 65536\nsched_policy = reuseport\n"})
	out, code := runDoctor(fakeMachine(goodSysctls(), 1048576), cfg)
	if code != 0 || !strings.Contains(out, "nothing to change") || strings.Contains(out, "CHANGE") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
	for _, want := range []string{"OK      net.core.somaxconn = 65535; need >= 4096 (smtp.ini backlog)", "net.ipv4.tcp_migrate_req", "net.core.rmem_max", "fs.file-max"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "wmem_max") || strings.Contains(out, "ip_local_port_range") {
		t.Errorf("checks that the config does not need:\n%s", out)
	}
}

func TestDoctorFindsShortfalls(t *testing.T) {
	s := goodSysctls()
	s["net.core.somaxconn"] = "128"
	s["net.ipv4.tcp_syncookies"] = "0"
	delete(s, "net.ipv4.tcp_migrate_req")
	s["fs.file-max"] = "EACCES"
	cfg := doctorConfig(t, map[string]string{"smtp.ini": "me = mx.example\nnodes = 2\nsched_policy = reuseport\nmax_connections = 50000\n"})
	out, code := runDoctor(fakeMachine(s, 4096), cfg)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	for _, want := range []string{
		"CHANGE  net.core.somaxconn = 128; need >= 4096",
		"fix: sysctl -w net.core.somaxconn=4096",
		"CHANGE  net.ipv4.tcp_syncookies = 0",
		"CHANGE  net.ipv4.tcp_migrate_req does not exist in this kernel",
		"CHANGE  open files (RLIMIT_NOFILE) soft 1024, hard 4096; need hard limit >= 51024",
		"LimitNOFILE=1048576",
		"UNKNOWN fs.file-max cannot be read",
		"4 setting(s) to change",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestDoctorUser(t *testing.T) {
	cfg := doctorConfig(t, map[string]string{"smtp.ini": "me = mx.example\nnodes = 1\nuser = loopmx\n"})
	out, code := runDoctor(fakeMachine(goodSysctls(), 1048576), cfg)
	if code != 0 || !strings.Contains(out, "OK      user loopmx exists (uid 990)") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
	cfg = doctorConfig(t, map[string]string{"smtp.ini": "me = mx.example\nnodes = 1\nuser = nobody-here\n"})
	out, code = runDoctor(fakeMachine(goodSysctls(), 1048576), cfg)
	if code != 1 || !strings.Contains(out, "CHANGE  user nobody-here does not exist") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
}

// TestDoctorConfigCheck: what check-config finds (a spool the workers
// cannot write, say) is the first finding, and makes the exit code 1.
func TestDoctorConfigCheck(t *testing.T) {
	cfg := doctorConfig(t, map[string]string{"smtp.ini": "me = mx.example\n"})
	var b strings.Builder
	m := fakeMachine(goodSysctls(), 1048576)
	code := m.doctor(cfg, &b, func() error {
		return errors.New("config: maildir.ini: path = /var/spool/loopmx: /var/spool/loopmx/new is not writable by nobody (uid 65534)")
	})
	out := b.String()
	if code != 1 || !strings.Contains(out, "CHANGE  config: maildir.ini: path = /var/spool/loopmx: /var/spool/loopmx/new is not writable by nobody (uid 65534); the server checks the same at start") ||
		!strings.Contains(out, "why: the server refuses to start with this error") || !strings.Contains(out, "1 setting(s) to change") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
	b.Reset()
	if code := m.doctor(cfg, &b, func() error { return nil }); code != 0 || !strings.Contains(b.String(), "OK      config: plugins, spool and its user, tls.ini as check-config checks them; the server checks the same at start") {
		t.Errorf("exit %d, output:\n%s", code, b.String())
	}
}

func TestDoctorForwardingNeedsPorts(t *testing.T) {
	s := goodSysctls()
	s["net.ipv4.ip_local_port_range"] = "60000 61000"
	cfg := doctorConfig(t, map[string]string{"smtp.ini": "me = mx.example\n"})
	cfg.Plugins = []string{"queue/smtp_forward"}
	out, code := runDoctor(fakeMachine(s, 1048576), cfg)
	if code != 1 || !strings.Contains(out, "CHANGE  net.ipv4.ip_local_port_range = 60000 61000") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
}

// TestDoctorHost runs against this machine: it must not fail to run.
func TestDoctorHost(t *testing.T) {
	cfg := doctorConfig(t, map[string]string{"smtp.ini": "me = mx.example\n"})
	var b strings.Builder
	if code := Doctor(cfg, &b, nil); code != 0 && code != 1 {
		t.Errorf("exit %d", code)
	}
	if !strings.Contains(b.String(), "net.core.somaxconn") {
		t.Errorf("output:\n%s", b.String())
	}
}
