// Command loopmx-hostile plays the hostile clients of docs/benchmarks.md
// (Hostile clients) against a server on this machine and says whether the
// server held: tricklers that send a byte every few seconds to hold
// connections while honest clients deliver (-scenario trickle), and
// clients that pipeline commands and never read the replies, with the
// server's resident memory before and after (-scenario noread). Every
// run is bounded in time and count, and only loopback addresses are
// accepted as the target.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const usage = `usage: loopmx-hostile -scenario trickle|noread|bigdata [flags] HOST:PORT

trickle  -n connections from -from each send one byte every -every (a
         command line that never ends, or with -in data a message after
         DATA), and reconnect when cut or refused; after -honest-after,
         -honest clients from -honest-from each deliver one message. It
         reports the refusals, how long the server let each trickler
         hold its connection (to compare with -deadline), and whether
         every honest client got its banner and its 250.
noread   -n clients (spread over -sources addresses from 127.0.1.1) say
         EHLO, then pipeline NOOPs and never read a reply, until the
         server stops reading them all; with -pid it reports the
         server's resident memory (VmRSS) before and after, and the
         growth per client.
bigdata  -n clients (from -sources addresses from 127.0.2.1) each send
         -msgs messages of -size octets at -rate octets a second, all at
         once, then idle without QUIT. It reports the acknowledged
         messages a second; with -pid the server's VmRSS before, its peak
         (VmHWM) and its VmRSS while the clients idle (every 30 s for
         -settle), and with -spool that every acknowledged message is in
         that Maildir whole.

Flags:
`

func main() { os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr)) }

// options are the parsed command line.
type options struct {
	scenario   string
	addr       string
	n          int
	every      time.Duration
	dur        time.Duration
	in         string
	from       string
	honest     int
	honestFrom string
	honestAt   time.Duration
	deadline   time.Duration
	sources    int
	pid        int
	size       int
	rate       int
	msgs       int
	settle     time.Duration
	spool      string
}

func realMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loopmx-hostile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	var o options
	fs.StringVar(&o.scenario, "scenario", "trickle", "trickle or noread")
	fs.IntVar(&o.n, "n", 1000, "tricklers, or clients that do not read")
	fs.DurationVar(&o.every, "every", 5*time.Second, "trickle: time between two bytes")
	fs.DurationVar(&o.dur, "d", 90*time.Second, "how long the run lasts at most")
	fs.StringVar(&o.in, "in", "line", "trickle: where the bytes go: line (a command line) or data (a message)")
	fs.StringVar(&o.from, "from", "127.0.0.2", "trickle: the tricklers' source address")
	fs.IntVar(&o.honest, "honest", 20, "trickle: honest clients")
	fs.StringVar(&o.honestFrom, "honest-from", "127.0.0.3", "trickle: the honest clients' source address")
	fs.DurationVar(&o.honestAt, "honest-after", 10*time.Second, "trickle: when the honest clients start")
	fs.DurationVar(&o.deadline, "deadline", 60*time.Second, "trickle: the server's documented deadline (command_timeout), for the verdict")
	fs.IntVar(&o.sources, "sources", 100, "noread: source addresses 127.0.1.1, 127.0.1.2, ...")
	fs.IntVar(&o.pid, "pid", 0, "the server's pid, to read its VmRSS")
	fs.IntVar(&o.size, "size", 10<<20, "bigdata: message size in octets")
	fs.IntVar(&o.rate, "rate", 640<<10, "bigdata: octets a second each client sends (0: unpaced)")
	fs.IntVar(&o.msgs, "msgs", 1, "bigdata: messages each client sends")
	fs.DurationVar(&o.settle, "settle", 150*time.Second, "bigdata: how long to watch the server's memory while the clients idle")
	fs.StringVar(&o.spool, "spool", "", "bigdata: the server's Maildir, to check every message is stored whole")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 1
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 1
	}
	o.addr = fs.Arg(0)
	host, _, err := net.SplitHostPort(o.addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		fmt.Fprintf(stderr, "loopmx-hostile: %s: the target must be a loopback address\n", o.addr)
		return 1
	}
	raiseFileLimit()
	switch o.scenario {
	case "trickle":
		return runTrickle(o, stdout)
	case "noread":
		return runNoRead(o, stdout)
	case "bigdata":
		return runBigData(o, stdout)
	}
	fmt.Fprintf(stderr, "loopmx-hostile: unknown scenario %q\n", o.scenario)
	return 1
}

// raiseFileLimit lifts the soft descriptor limit to the hard one.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// dialFrom connects to addr from the local address ip.
func dialFrom(addr, ip string) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// readReply reads one reply and returns its last line.
func readReply(r *bufio.Reader) (string, error) {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return line, err
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n"), nil
		}
	}
}

// cmd sends a command and requires a reply starting with want.
func cmd(c net.Conn, r *bufio.Reader, line, want string) error {
	if _, err := io.WriteString(c, line+"\r\n"); err != nil {
		return err
	}
	got, err := readReply(r)
	if err != nil {
		return fmt.Errorf("%s: %w", line, err)
	}
	if !strings.HasPrefix(got, want) {
		return fmt.Errorf("%s: %q, want %s", line, got, want)
	}
	return nil
}

// trickleStats are what the tricklers saw.
type trickleStats struct {
	connects, refused, cut, dialErrs atomic.Int64
	overdue                          atomic.Int64 // still open at the end, past the deadline
	mu                               sync.Mutex
	held                             []time.Duration // how long each cut connection was held after its last progress
	replies                          map[string]int  // the cut replies
}

func (s *trickleStats) noteCut(held time.Duration, reply string) {
	s.cut.Add(1)
	s.mu.Lock()
	s.held = append(s.held, held)
	s.replies[reply]++
	s.mu.Unlock()
}

func runTrickle(o options, out io.Writer) int {
	st := &trickleStats{replies: map[string]int{}}
	end := time.Now().Add(o.dur)
	var wg sync.WaitGroup
	var open atomic.Int64
	var maxOpen atomic.Int64
	for i := range o.n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread the first connections over one interval.
			time.Sleep(time.Duration(i) * o.every / time.Duration(o.n))
			for time.Now().Before(end) {
				trickleOnce(o, st, end, &open, &maxOpen)
			}
		}()
	}
	// Honest clients.
	type result struct {
		banner time.Duration
		err    error
	}
	results := make([]result, o.honest)
	var hwg sync.WaitGroup
	time.Sleep(o.honestAt)
	for i := range o.honest {
		hwg.Add(1)
		go func() {
			defer hwg.Done()
			results[i].banner, results[i].err = honestSession(o)
		}()
	}
	hwg.Wait()
	wg.Wait()

	where := "a command line"
	if o.in == "data" {
		where = "a message"
	}
	fmt.Fprintf(out, "trickle: %d tricklers from %s, a byte every %v in %s, for %v; %d honest clients from %s after %v\n",
		o.n, o.from, o.every, where, o.dur, o.honest, o.honestFrom, o.honestAt)
	fmt.Fprintf(out, "tricklers: %d connections served, %d refused before the banner, %d dial errors, at most %d open at once\n",
		st.connects.Load(), st.refused.Load(), st.dialErrs.Load(), maxOpen.Load())
	ok := true
	slices.Sort(st.held)
	if n := len(st.held); n > 0 {
		fmt.Fprintf(out, "tricklers cut: %d, held after their last progress: median %v, max %v (deadline %v)\n",
			n, st.held[n/2].Round(10*time.Millisecond), st.held[n-1].Round(10*time.Millisecond), o.deadline)
		for r, k := range st.replies {
			fmt.Fprintf(out, "  %d x %s\n", k, r)
		}
		// The server checks deadlines every half second.
		if st.held[n-1] > o.deadline+2*time.Second {
			fmt.Fprintf(out, "FAIL: a trickler held its connection for %v, past the deadline\n", st.held[n-1])
			ok = false
		}
	} else {
		fmt.Fprintf(out, "tricklers cut: none (is the run longer than the deadline?)\n")
	}
	if n := st.overdue.Load(); n > 0 {
		fmt.Fprintf(out, "FAIL: %d tricklers were still connected at the end, past the deadline\n", n)
		ok = false
	}
	served := 0
	var banners []time.Duration
	for i, r := range results {
		if r.err != nil {
			fmt.Fprintf(out, "honest client %d: %v\n", i, r.err)
			continue
		}
		served++
		banners = append(banners, r.banner)
	}
	slices.Sort(banners)
	if len(banners) > 0 {
		fmt.Fprintf(out, "honest clients: %d of %d got a banner and a 250; banner after median %v, max %v\n",
			served, o.honest, banners[len(banners)/2].Round(time.Microsecond), banners[len(banners)-1].Round(time.Microsecond))
	}
	if served != o.honest {
		fmt.Fprintf(out, "FAIL: %d honest clients were not served\n", o.honest-served)
		ok = false
	}
	if !ok {
		return 2
	}
	fmt.Fprintln(out, "PASS")
	return 0
}

// trickleOnce runs one trickling connection until the server cuts it or
// the run ends; a refused one waits an interval before the next try.
func trickleOnce(o options, st *trickleStats, end time.Time, open, maxOpen *atomic.Int64) {
	c, err := dialFrom(o.addr, o.from)
	if err != nil {
		st.dialErrs.Add(1)
		time.Sleep(o.every)
		return
	}
	defer c.Close()
	c.SetReadBuffer(4 << 10)
	c.SetWriteBuffer(4 << 10)
	r := bufio.NewReaderSize(c, 1024)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	banner, err := readReply(r)
	if err != nil || !strings.HasPrefix(banner, "220") {
		st.refused.Add(1)
		time.Sleep(o.every)
		return
	}
	st.connects.Add(1)
	n := open.Add(1)
	defer open.Add(-1)
	for m := maxOpen.Load(); n > m && !maxOpen.CompareAndSwap(m, n); m = maxOpen.Load() {
	}
	payload := "EHLO "
	if o.in == "data" {
		for _, step := range [][2]string{{"EHLO trickler.test", "250"}, {"MAIL FROM:<t@trickler.test>", "250"}, {"RCPT TO:<postmaster>", "250"}, {"DATA", "354"}} {
			if cmd(c, r, step[0], step[1]) != nil {
				return
			}
		}
		payload = ""
	}
	progress := time.Now() // a message's grace runs from the 354
	// The reader: the server's 421, or its close.
	cutReply := make(chan string, 1)
	go func() {
		c.SetReadDeadline(end.Add(o.deadline))
		line, err := readReply(r)
		if err != nil && line == "" {
			line = "closed without a reply"
		}
		cutReply <- strings.TrimSpace(line)
	}()
	i := 0
	for {
		b := byte('a')
		if i < len(payload) {
			b = payload[i]
		} else if o.in == "data" && i%70 == 69 {
			b = '\n' // a bare LF now and then keeps lines short; the message is refused anyway
		}
		i++
		select {
		case reply := <-cutReply:
			st.noteCut(time.Since(progress), reply)
			return
		case <-time.After(o.every):
		}
		if !time.Now().Before(end) {
			// The run is over; the connection was not cut.
			if held := time.Since(progress); held > o.deadline+2*time.Second {
				st.overdue.Add(1)
			}
			return
		}
		if _, err := c.Write([]byte{b}); err != nil {
			st.noteCut(time.Since(progress), "write failed: "+err.Error())
			return
		}
		if i == 1 && o.in != "data" {
			// A command line's deadline runs from its first byte; the
			// wait before it is the inactivity timeout's.
			progress = time.Now()
		}
	}
}

// honestSession delivers one message from the honest address and returns
// how long the banner took.
func honestSession(o options) (time.Duration, error) {
	start := time.Now()
	c, err := dialFrom(o.addr, o.honestFrom)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	banner, err := readReply(r)
	if err != nil {
		return 0, fmt.Errorf("banner: %w", err)
	}
	took := time.Since(start)
	if !strings.HasPrefix(banner, "220") {
		return 0, fmt.Errorf("banner: %q", banner)
	}
	body := "Subject: honest\r\n\r\n" + strings.Repeat(strings.Repeat("h", 62)+"\r\n", 16) + "."
	for _, step := range [][2]string{{"EHLO honest.test", "250"}, {"MAIL FROM:<h@honest.test>", "250"}, {"RCPT TO:<postmaster>", "250"}, {"DATA", "354"}, {body, "250"}, {"QUIT", "221"}} {
		if err := cmd(c, r, step[0], step[1]); err != nil {
			return 0, err
		}
	}
	return took, nil
}

// vmRSS reads a process's resident memory in bytes, 0 if unknown.
func vmRSS(pid int) int64 { return procStatus(pid, "VmRSS:") }

// procStatus reads a size field of /proc/PID/status in bytes (VmRSS:,
// VmHWM:), 0 if unknown.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

var noopBlock = []byte(strings.Repeat("NOOP\r\n", 1000))

func runNoRead(o options, out io.Writer) int {
	before := int64(0)
	if o.pid > 0 {
		before = vmRSS(o.pid)
	}
	var written atomic.Int64
	var failed atomic.Int64
	conns := make([]*net.TCPConn, 0, o.n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	stop := make(chan struct{})
	end := time.Now().Add(o.dur)
	for i := range o.n {
		src := fmt.Sprintf("127.0.1.%d", 1+i%o.sources)
		c, err := dialFrom(o.addr, src)
		if err != nil {
			failed.Add(1)
			continue
		}
		c.SetReadBuffer(4 << 10)
		c.SetWriteBuffer(4 << 10)
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		r := bufio.NewReaderSize(c, 512)
		if b, err := readReply(r); err != nil || !strings.HasPrefix(b, "220") {
			failed.Add(1)
			c.Close()
			continue
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.WriteString(c, "EHLO noread.test\r\n")
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.SetWriteDeadline(end)
				n, err := c.Write(noopBlock)
				written.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	// The server has stopped reading every client once nothing moves for
	// two seconds.
	last, still := int64(-1), 0
	for still < 20 && time.Now().Before(end) {
		time.Sleep(100 * time.Millisecond)
		if w := written.Load(); w == last {
			still++
		} else {
			last, still = w, 0
		}
	}
	after := int64(0)
	if o.pid > 0 {
		after = vmRSS(o.pid)
	}
	close(stop)
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	fmt.Fprintf(out, "noread: %d clients from %d addresses pipelined %d MB of NOOPs without reading; %d could not connect\n",
		len(conns), o.sources, last>>20, failed.Load())
	if still < 20 {
		fmt.Fprintf(out, "FAIL: the clients were still writing after %v: the server kept reading\n", o.dur)
		return 2
	}
	if o.pid > 0 {
		grow := after - before
		fmt.Fprintf(out, "server VmRSS: %d MB before, %d MB with every client stalled: %d MB more, %d KB a client\n",
			before>>20, after>>20, grow>>20, grow/int64(max(len(conns), 1))>>10)
	}
	fmt.Fprintln(out, "PASS")
	return 0
}
