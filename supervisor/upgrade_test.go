package supervisor

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
)

// TestHandoffRoundTrip: the state written before the exec reads back the
// same, and the variable is removed once read.
func TestHandoffRoundTrip(t *testing.T) {
	cur := &proc{id: 1, gen: 4, pid: 101, started: time.Unix(100, 5)}
	specs := []config.Listener{{Addr: "127.0.0.1:25"}, {Addr: "127.0.0.1:465", TLS: true}, {Addr: "127.0.0.1:2525", Proxy: true}}
	old := &proc{id: 2, gen: 3, pid: 102, started: time.Unix(50, 0), retiring: true}
	s := &sup{
		gen:   4,
		socks: &sockets{specs: specs, backlog: 512, reuseport: true, slots: map[int][]int{1: {7, 9, 11}, 2: {8, 10, 12}}},
		slots: []*slot{{id: 1, cur: cur}, {id: 2, failures: 3}},
		procs: map[int]*proc{101: cur, 102: old},
	}
	data, err := json.Marshal(s.handoff())
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(envHandoff, string(data))
	h, ok, err := takeHandoff()
	if !ok || err != nil {
		t.Fatalf("takeHandoff: %v %v", ok, err)
	}
	if _, still := os.LookupEnv(envHandoff); still {
		t.Error("the handoff variable is still set")
	}
	want := handoff{Gen: 4, Listeners: specs, Backlog: 512, Reuseport: true,
		Slots: []handoffSlot{
			{ID: 1, FDs: []int{7, 9, 11}, PID: 101, Gen: 4, Started: time.Unix(100, 5).UnixNano()},
			{ID: 2, FDs: []int{8, 10, 12}, Failures: 3},
		},
		Draining: []handoffProc{{ID: 2, PID: 102, Gen: 3, Started: time.Unix(50, 0).UnixNano()}},
	}
	got, _ := json.Marshal(h)
	exp, _ := json.Marshal(want)
	if string(got) != string(exp) {
		t.Errorf("handoff:\n got %s\nwant %s", got, exp)
	}
}

func TestTakeHandoffBad(t *testing.T) {
	t.Setenv(envHandoff, "{not json")
	if _, ok, err := takeHandoff(); !ok || err == nil {
		t.Errorf("bad handoff: ok %v err %v", ok, err)
	}
}

// TestAdoptRejectsNonSocket: a descriptor that is not a listening socket
// stops the adoption.
func TestAdoptRejectsNonSocket(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := &sup{procs: map[int]*proc{}, log: zerolog.Nop()}
	err = s.adopt(&handoff{Gen: 1, Shared: []int{int(f.Fd())}, Slots: []handoffSlot{{ID: 1}}})
	if err == nil || !strings.Contains(err.Error(), "not a listening socket") {
		t.Errorf("adopt: %v", err)
	}
	err = s.adopt(&handoff{Gen: 1, Slots: []handoffSlot{{ID: 2}}})
	if err == nil || !strings.Contains(err.Error(), "worker ids") {
		t.Errorf("adopt with a gap in ids: %v", err)
	}
}

// TestAdoptListeners: the new image takes the listeners the old one
// describes; a handoff from an image that only bound listen (its
// Listen field) is read as plain SMTP listeners; a socket set that does
// not match the listeners stops the adoption.
func TestAdoptListeners(t *testing.T) {
	sock := func() int {
		t.Helper()
		f, err := testListen("127.0.0.1:0", 16, false)
		if err != nil {
			t.Fatal(err)
		}
		fd, err := rawFD(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { closeAll([]int{fd}) })
		return fd
	}
	specs := []config.Listener{{Addr: "127.0.0.1:25"}, {Addr: "127.0.0.1:465", TLS: true}}
	s := &sup{procs: map[int]*proc{}, log: zerolog.Nop()}
	if err := s.adopt(&handoff{Gen: 3, Listeners: specs, Shared: []int{sock(), sock()}, Slots: []handoffSlot{{ID: 1}}}); err != nil {
		t.Fatal(err)
	}
	if got := specStrings(s.socks.specs); strings.Join(got, ",") != "smtp 127.0.0.1:25,smtps 127.0.0.1:465" {
		t.Errorf("adopted listeners %v", got)
	}
	s = &sup{procs: map[int]*proc{}, log: zerolog.Nop()}
	if err := s.adopt(&handoff{Gen: 3, Listen: []string{"127.0.0.1:25"}, Shared: []int{sock()}, Slots: []handoffSlot{{ID: 1}}}); err != nil {
		t.Fatal(err)
	}
	if got := specStrings(s.socks.specs); strings.Join(got, ",") != "smtp 127.0.0.1:25" {
		t.Errorf("listeners from an old handoff: %v", got)
	}
	s = &sup{procs: map[int]*proc{}, log: zerolog.Nop()}
	err := s.adopt(&handoff{Gen: 3, Listeners: specs, Shared: []int{sock()}, Slots: []handoffSlot{{ID: 1}}})
	if err == nil || !strings.Contains(err.Error(), "1 sockets for 2 listeners") {
		t.Errorf("adopt with one socket for two listeners: %v", err)
	}
}

func TestParentOf(t *testing.T) {
	cmd := exec.Command("sleep", "5")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if ppid, err := parentOf(cmd.Process.Pid); err != nil || ppid != os.Getpid() {
		t.Errorf("parentOf(child) = %d %v, want %d", ppid, err, os.Getpid())
	}
}

func TestLastLine(t *testing.T) {
	if got := lastLine([]byte("a\nconfig: smtp.ini: backlog: bad\n\n")); got != "config: smtp.ini: backlog: bad" {
		t.Errorf("lastLine = %q", got)
	}
}
