package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeProc lays out a fake /proc entry for one process.
func writeProc(t *testing.T, dir string, pid, ppid int, comm string, utime, stime, cutime, cstime int, rssKB int) {
	t.Helper()
	p := filepath.Join(dir, fmt.Sprint(pid))
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	stat := fmt.Sprintf("%d (%s) S %d %d %d 0 -1 4194560 100 0 0 0 %d %d %d %d 20 0 1 0 100 1000000 250\n",
		pid, comm, ppid, pid, pid, utime, stime, cutime, cstime)
	status := fmt.Sprintf("Name:\t%s\nState:\tS (sleeping)\nVmRSS:\t    %d kB\nThreads:\t1\n", comm, rssKB)
	if err := os.WriteFile(filepath.Join(p, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "status"), []byte(status), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestServerTreeIncludesDescendants is the supervisor case: a master with
// worker processes, one of which has a helper of its own. The server's CPU
// and memory are the sum over all of them, and nothing else.
func TestServerTreeIncludesDescendants(t *testing.T) {
	dir := t.TempDir()
	writeProc(t, dir, 1, 0, "init", 999, 999, 0, 0, 9999)
	writeProc(t, dir, 100, 1, "loopmx", 10, 5, 3, 2, 1000)            // the root: 20 ticks
	writeProc(t, dir, 101, 100, "loopmx worker", 100, 50, 0, 0, 2000) // 150
	writeProc(t, dir, 102, 100, "loopmx (2) )x", 40, 10, 0, 0, 3000)  // 50; a name with parens
	writeProc(t, dir, 103, 101, "helper", 7, 3, 0, 0, 500)            // 10, a grandchild
	writeProc(t, dir, 200, 1, "bystander", 500, 500, 0, 0, 8000)      // not ours
	if err := os.MkdirAll(filepath.Join(dir, "self"), 0o755); err != nil {
		t.Fatal(err)
	}

	got, err := sampleTree(dir, 100)
	if err != nil {
		t.Fatal(err)
	}
	wantCPU := time.Duration(230) * time.Second / time.Duration(clockTicks)
	if got.Procs != 4 || got.CPU != wantCPU || got.RSS != 6500<<10 {
		t.Errorf("tree of 100 = %+v, want 4 processes, CPU %v, RSS %d", got, wantCPU, 6500<<10)
	}
	if _, err := sampleTree(dir, 4242); err == nil {
		t.Error("a pid that does not exist gave no error")
	}
}

func TestParseStatRejectsGarbage(t *testing.T) {
	for _, s := range []string{"", "12 (x S 1", "12 (x) S 1 2 3", "12 (x) S notapid 1 1 0 -1 0 0 0 0 0 1 2 3 4 20"} {
		if _, err := parseStat([]byte(s)); err == nil {
			t.Errorf("parseStat(%q) gave no error", s)
		}
	}
}

// TestLiveTreeCountsChildren samples this very process after starting a
// child: the child must be part of the tree.
func TestLiveTreeCountsChildren(t *testing.T) {
	before, err := sampleTree(procDir, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if before.RSS <= 0 {
		t.Errorf("own RSS = %d, want a positive number", before.RSS)
	}
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Skip("cannot start a child process:", err)
	}
	defer func() {
		child.Process.Kill()
		child.Wait()
	}()
	with, err := sampleTree(procDir, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if with.Procs != before.Procs+1 {
		t.Errorf("with a child: %d processes, before %d; want one more", with.Procs, before.Procs)
	}
}

func TestClockTicksIsSane(t *testing.T) {
	if clockTicks < 1 || clockTicks > 10000 {
		t.Errorf("clockTicks = %d", clockTicks)
	}
}

// TestCPUStatBusyLeavesOutIdleAndIOWait reads the cpu total of /proc/stat:
// busy is user+nice+system+irq+softirq+steal, idle and iowait are not.
func TestCPUStatBusyLeavesOutIdleAndIOWait(t *testing.T) {
	stat := "cpu  100 5 50 1000 40 3 2 1 0 0\ncpu0 50 2 25 500 20 1 1 0 0 0\nintr 1\n"
	busy, total, err := parseCPUStat([]byte(stat))
	if err != nil || busy != 161 || total != 1201 {
		t.Errorf("parseCPUStat = busy %d total %d err %v; want 161, 1201", busy, total, err)
	}
	for _, bad := range []string{"", "intr 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\n", "cpu 1 2 3\n"} {
		if _, _, err := parseCPUStat([]byte(bad)); err == nil {
			t.Errorf("parseCPUStat(%q) gave no error", bad)
		}
	}
}

// TestOtherWorkExcludesServerAndClient: over two seconds the machine was
// busy for 1.5 CPU-seconds, of which the server took 0.8 and the client
// 0.4, so other programs kept 0.15 of a CPU busy.
func TestOtherWorkExcludesServerAndClient(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := cpuSample{at: t0, busy: 10 * time.Second, server: time.Second, self: time.Second}
	b := cpuSample{at: t0.Add(2 * time.Second), busy: 11500 * time.Millisecond, server: 1800 * time.Millisecond, self: 1400 * time.Millisecond}
	if got := busyBetween(a, b); got < 0.1499 || got > 0.1501 {
		t.Errorf("other work = %v CPUs, want 0.15", got)
	}
	// Tick rounding can make the server's share exceed the machine's: never negative.
	b.server = 5 * time.Second
	if got := busyBetween(a, b); got != 0 {
		t.Errorf("other work = %v, want 0 when the server accounts for all", got)
	}
}

// TestBusyMachineIsWarnedAbout: a quiet machine gets no warning; a
// quarter of a CPU of other work, or a load average above the CPU count,
// each get one that says which.
func TestBusyMachineIsWarnedAbout(t *testing.T) {
	quiet := Machine{NProc: 2, Load1: "0.80", OtherBusy: 0.05}
	if w := loadWarning(quiet); w != "" {
		t.Errorf("quiet machine warned: %s", w)
	}
	if w := loadWarning(Machine{NProc: 2, Load1: "0.50", OtherBusy: -1}); w != "" {
		t.Errorf("unmeasured busy warned: %s", w)
	}
	busy := quiet
	busy.OtherBusy = 0.6
	if w := loadWarning(busy); !strings.Contains(w, "0.60 of 2 CPUs busy") {
		t.Errorf("busy CPU warning = %q", w)
	}
	loaded := quiet
	loaded.Load1 = "3.10"
	if w := loadWarning(loaded); !strings.Contains(w, "load average 3.10 on 2 CPUs") {
		t.Errorf("load warning = %q", w)
	}
}
