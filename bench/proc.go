package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procTree is the CPU time and memory of a process and all its descendants
// at one moment, read from /proc.
type procTree struct {
	CPU   time.Duration // utime+stime+cutime+cstime, summed over the tree
	RSS   int64         // bytes of VmRSS, summed over the tree
	Procs int           // how many processes the tree had
}

// procStat is what the tree walk needs from one /proc/PID/stat.
type procStat struct {
	ppid  int
	ticks uint64 // utime+stime+cutime+cstime
}

// clockTicks is the kernel's USER_HZ, the unit of the times in /proc/PID/stat.
var clockTicks = readClockTicks()

// readClockTicks reads AT_CLKTCK from this process's auxiliary vector, which
// is where sysconf(_SC_CLK_TCK) gets it, and falls back to 100.
func readClockTicks() uint64 {
	const atClkTck = 17
	b, err := os.ReadFile("/proc/self/auxv")
	if err != nil || strconv.IntSize != 64 {
		return 100
	}
	for i := 0; i+16 <= len(b); i += 16 {
		key := binary.NativeEndian.Uint64(b[i:])
		if key == atClkTck {
			if v := binary.NativeEndian.Uint64(b[i+8:]); v > 0 {
				return v
			}
		}
	}
	return 100
}

// parseStat reads the parent pid and the four CPU times from the text of a
// /proc/PID/stat file. The command name, field 2, is in parentheses and may
// itself hold spaces and parentheses, so fields are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return procStat{}, fmt.Errorf("no ')' in stat")
	}
	f := strings.Fields(string(b[end+1:]))
	// f[0] is field 3 (state); field k is f[k-3].
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("stat has %d fields after the name", len(f))
	}
	var st procStat
	var err error
	if st.ppid, err = strconv.Atoi(f[4-3]); err != nil {
		return procStat{}, fmt.Errorf("ppid: %w", err)
	}
	for k := 14; k <= 17; k++ { // utime, stime, cutime, cstime
		v, err := strconv.ParseUint(f[k-3], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("field %d: %w", k, err)
		}
		st.ticks += v
	}
	return st, nil
}

// sampleTree sums CPU time and RSS over root and every process whose chain of
// parents leads to root. The children's cutime/cstime are included so that a
// child that exits and is reaped between two samples still counts: its time
// moves into its parent's cumulative fields. procDir is normally "/proc".
func sampleTree(procDir string, root int) (procTree, error) {
	ents, err := os.ReadDir(procDir)
	if err != nil {
		return procTree{}, fmt.Errorf("proc: %w", err)
	}
	stats := make(map[int]procStat, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procDir, e.Name(), "stat"))
		if err != nil {
			continue // the process ended while we looked
		}
		if st, err := parseStat(b); err == nil {
			stats[pid] = st
		}
	}
	if _, ok := stats[root]; !ok {
		return procTree{}, fmt.Errorf("proc: pid %d: no such process", root)
	}
	var t procTree
	var ticks uint64
	for pid, st := range stats {
		if !descends(stats, pid, root) {
			continue
		}
		t.Procs++
		ticks += st.ticks
		t.RSS += readRSS(filepath.Join(procDir, strconv.Itoa(pid), "status"))
	}
	t.CPU = time.Duration(ticks * uint64(time.Second) / clockTicks)
	return t, nil
}

// descends reports whether pid is root or one of its descendants.
func descends(stats map[int]procStat, pid, root int) bool {
	for range len(stats) + 1 { // bounded: a ppid loop cannot hang the walk
		if pid == root {
			return true
		}
		st, ok := stats[pid]
		if !ok || pid <= 1 {
			return false
		}
		pid = st.ppid
	}
	return false
}

// readRSS returns VmRSS in bytes from a /proc/PID/status file, or 0 when the
// file is gone or the process has no memory (a zombie).
func readRSS(path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// selfCPU returns the CPU time this process has used so far, user and system.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// raiseFileLimit lifts the soft limit on open files to the hard limit, since
// every connection the client holds is a descriptor, and returns the limit now
// in force.
func raiseFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("rlimit: %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("rlimit: raise to %d: %w", rl.Max, err)
		}
	}
	return rl.Cur, nil
}

// Machine names the computer a run happened on; figures mean little without it.
type Machine struct {
	NProc     int    `json:"nproc"`       // processors in the machine
	Usable    int    `json:"cpus_usable"` // processors this program may run on (taskset)
	CPU       string `json:"cpu"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go"`
	Load1     string `json:"loadavg_1m"` // at the start: other work on the machine skews figures
	// OtherBusy is how many CPUs' worth of work other programs did in the
	// -load-check interval just before the run, with the server's and
	// this program's own CPU taken out; -1 when it was not measured.
	OtherBusy float64 `json:"other_busy_cpus"`
	Warning   string  `json:"warning,omitempty"` // set when the figures are unreliable
}

// busyLoad is the share of one CPU that other work may use before the run
// without a warning, and loadPerCPU the one-minute load average per CPU.
// A benchmark needs the machine to itself: on two cores, a quarter of a
// core taken by something else already moves rates and latency tails.
const (
	busyLoad   = 0.25
	loadPerCPU = 1.0
)

// loadWarning says why the figures of a run on m cannot be trusted, or
// returns "" when the machine was quiet: other work used a quarter of a CPU
// or more just before the run, or more processes were runnable over the
// last minute than there are CPUs.
func loadWarning(m Machine) string {
	var why []string
	if m.OtherBusy >= busyLoad {
		why = append(why, fmt.Sprintf("other programs kept %.2f of %d CPUs busy just before the run", m.OtherBusy, m.NProc))
	}
	if l, err := strconv.ParseFloat(m.Load1, 64); err == nil && m.NProc > 0 && l > loadPerCPU*float64(m.NProc) {
		why = append(why, fmt.Sprintf("load average %s on %d CPUs", m.Load1, m.NProc))
	}
	if len(why) == 0 {
		return ""
	}
	return "the machine is busy (" + strings.Join(why, "; ") + "): rates and latency are unreliable; " +
		"compare servers within one run (make bench-compare) or run again when it is idle"
}

// parseCPUStat reads the first line of /proc/stat, the sum over all CPUs,
// and returns the clock ticks spent busy and in total since boot. Busy is
// user, nice, system, irq, softirq and steal; idle and iowait are not
// (guest time is already inside user).
func parseCPUStat(b []byte) (busy, total uint64, err error) {
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: first line %q is not the cpu total", line)
	}
	for i, name := range []string{"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"} {
		v, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: cpu %s: %w", name, err)
		}
		total += v
		if name != "idle" && name != "iowait" {
			busy += v
		}
	}
	return busy, total, nil
}

// cpuSample is what otherBusy reads at each end of its interval.
type cpuSample struct {
	at     time.Time
	busy   time.Duration // all CPUs' busy time since boot, from /proc/stat
	server time.Duration // the server tree's CPU (0 without a pid)
	self   time.Duration // this program's CPU
}

// sampleCPU reads the machine's busy time, the server tree's CPU (pid 0:
// none) and this program's.
func sampleCPU(procDir string, pid int) (cpuSample, error) {
	b, err := os.ReadFile(filepath.Join(procDir, "stat"))
	if err != nil {
		return cpuSample{}, err
	}
	busy, _, err := parseCPUStat(b)
	if err != nil {
		return cpuSample{}, err
	}
	s := cpuSample{at: time.Now(), busy: time.Duration(busy * uint64(time.Second) / clockTicks), self: selfCPU()}
	if pid > 0 {
		t, err := sampleTree(procDir, pid)
		if err != nil {
			return cpuSample{}, err
		}
		s.server = t.CPU
	}
	return s, nil
}

// busyBetween is how many CPUs' worth of work other programs did between
// two samples: the machine's busy time less the server's and this
// program's, over the time that passed.
func busyBetween(a, b cpuSample) float64 {
	el := b.at.Sub(a.at).Seconds()
	if el <= 0 {
		return 0
	}
	other := (b.busy - a.busy) - (b.server - a.server) - (b.self - a.self)
	return max(other.Seconds()/el, 0)
}

// otherBusy measures, over d, how many CPUs' worth of work ran on the
// machine besides the server's process tree (pid, 0 for none) and this
// program.
func otherBusy(procDir string, pid int, d time.Duration) (float64, error) {
	a, err := sampleCPU(procDir, pid)
	if err != nil {
		return 0, err
	}
	time.Sleep(d)
	b, err := sampleCPU(procDir, pid)
	if err != nil {
		return 0, err
	}
	return busyBetween(a, b), nil
}

// machineInfo reads the processor count and model and the kernel release
// from /proc; runtime.NumCPU alone would count only the processors taskset
// left this program.
func machineInfo() Machine {
	m := Machine{NProc: runtime.NumCPU(), Usable: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			m.Load1 = f[0]
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		n := 0
		for line := range strings.Lines(string(b)) {
			k, v, ok := strings.Cut(line, ":")
			switch k = strings.TrimSpace(k); {
			case !ok:
			case k == "processor":
				n++
			case k == "model name" && m.CPU == "":
				m.CPU = strings.TrimSpace(v)
			}
		}
		m.NProc = max(n, m.NProc)
	}
	return m
}
