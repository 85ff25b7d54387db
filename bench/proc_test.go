package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
