package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// bigBody is the message every bigdata client sends after its own
// Subject line: lines of 78 octets, with a leading dot now and then so
// dot-stuffing is exercised, up to size octets.
func bigBody(size int) (wire, stored []byte) {
	var w, s bytes.Buffer
	for i := 0; s.Len() < size; i++ {
		line := strings.Repeat(string(rune('a'+i%26)), 78)
		if i%101 == 0 {
			line = "." + line[1:]
			w.WriteByte('.')
		}
		w.WriteString(line + "\r\n")
		s.WriteString(line + "\r\n")
	}
	return w.Bytes(), s.Bytes()
}

// runBigData: -n clients each send -msgs messages of -size octets at
// -rate octets a second (0: as fast as they can), all at once, and then
// stay connected without QUIT. It reports the durable messages a second;
// with -pid the server's resident memory: before, its peak (VmHWM) and
// while the clients idle, every 30 s for -settle (the Go runtime gives
// memory back to the system in the background, and collects garbage at
// least every two minutes when nothing allocates); with -spool it checks
// that every message is in the Maildir, whole.
func runBigData(o options, out io.Writer) int {
	wire, stored := bigBody(o.size)
	before := int64(0)
	if o.pid > 0 {
		before = procStatus(o.pid, "VmRSS:")
	}
	var ok, failed atomic.Int64
	var mu sync.Mutex
	errs := map[string]int{}
	conns := make([]net.Conn, o.n)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(o.dur)
	// A prober from 127.0.0.4 measures the banner while the bodies
	// arrive: spool writes must not hold up the event loop.
	probeStop := make(chan struct{})
	probed := make(chan []time.Duration, 1)
	go func() { probed <- probeBanners(o.addr, probeStop) }()
	for i := range o.n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, sent, err := bigSession(o, i, wire, deadline)
			conns[i] = c
			ok.Add(int64(sent))
			if err != nil {
				failed.Add(int64(o.msgs - sent))
				mu.Lock()
				errs[err.Error()]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(probeStop)
	banners := <-probed
	peak := int64(0)
	var idle []int64
	if o.pid > 0 {
		peak = procStatus(o.pid, "VmHWM:")
		idle = append(idle, procStatus(o.pid, "VmRSS:"))
		for t := time.Duration(0); t < o.settle; t += 30 * time.Second {
			time.Sleep(30 * time.Second)
			idle = append(idle, procStatus(o.pid, "VmRSS:"))
		}
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	pace := "unpaced"
	if o.rate > 0 {
		pace = fmt.Sprintf("at %d KiB/s", o.rate>>10)
	}
	fmt.Fprintf(out, "bigdata: %d clients, each %d messages of %d MiB %s, then idle without QUIT; took %v\n",
		o.n, o.msgs, o.size>>20, pace, took.Round(time.Millisecond))
	fmt.Fprintf(out, "replies: %d x 250, %d failed; %.2f messages/s acknowledged\n", ok.Load(), failed.Load(), float64(ok.Load())/took.Seconds())
	for e, k := range errs {
		fmt.Fprintf(out, "  %d x %s\n", k, e)
	}
	if n := len(banners); n > 0 {
		slices.Sort(banners)
		fmt.Fprintf(out, "banner of a new client during the run (%d probes): median %v, p99 %v, max %v\n",
			n, banners[n/2].Round(time.Microsecond), banners[n*99/100].Round(time.Microsecond), banners[n-1].Round(time.Microsecond))
	}
	pass := failed.Load() == 0
	if o.pid > 0 {
		fmt.Fprintf(out, "server memory: VmRSS %d MB before, VmHWM (peak) %d MB; VmRSS with every client idle after its messages:", before>>20, peak>>20)
		for i, v := range idle {
			fmt.Fprintf(out, " %d MB at +%ds", v>>20, 30*i)
		}
		fmt.Fprintln(out)
	}
	if o.spool != "" {
		intact, bad := checkMaildir(o.spool, stored)
		fmt.Fprintf(out, "maildir %s: %d messages intact, %d not\n", o.spool, intact, bad)
		if intact != int(ok.Load()) || bad > 0 {
			fmt.Fprintf(out, "FAIL: %d acknowledged messages, %d intact on disk\n", ok.Load(), intact)
			pass = false
		}
	}
	if !pass {
		return 2
	}
	fmt.Fprintln(out, "PASS")
	return 0
}

// bigSession sends its paced messages and returns the open connection
// and how many were acknowledged.
func bigSession(o options, i int, wire []byte, deadline time.Time) (net.Conn, int, error) {
	c, err := dialFrom(o.addr, fmt.Sprintf("127.0.2.%d", 1+i%o.sources))
	if err != nil {
		return nil, 0, fmt.Errorf("dial: %w", err)
	}
	c.SetDeadline(deadline)
	r := bufio.NewReader(c)
	if b, err := readReply(r); err != nil || !strings.HasPrefix(b, "220") {
		return c, 0, fmt.Errorf("banner: %q %v", b, err)
	}
	if err := cmd(c, r, "EHLO big.test", "250"); err != nil {
		return c, 0, err
	}
	for k := range o.msgs {
		if err := bigMessage(o, c, r, "big "+strconv.Itoa(i)+"."+strconv.Itoa(k), wire); err != nil {
			return c, k, err
		}
	}
	return c, o.msgs, nil
}

// bigMessage sends one message, in chunks every 100 ms at the rate.
func bigMessage(o options, c net.Conn, r *bufio.Reader, subject string, wire []byte) error {
	for _, step := range [][2]string{{"MAIL FROM:<big@big.test> SIZE=" + strconv.Itoa(len(wire)+64), "250"}, {"RCPT TO:<postmaster>", "250"}, {"DATA", "354"}} {
		if err := cmd(c, r, step[0], step[1]); err != nil {
			return err
		}
	}
	if _, err := io.WriteString(c, "Subject: "+subject+"\r\n\r\n"); err != nil {
		return err
	}
	chunk := len(wire)
	if o.rate > 0 {
		chunk = max(o.rate/10, 1)
	}
	next := time.Now()
	for off := 0; off < len(wire); off += chunk {
		time.Sleep(time.Until(next))
		next = next.Add(100 * time.Millisecond)
		if _, err := c.Write(wire[off:min(off+chunk, len(wire))]); err != nil {
			return fmt.Errorf("body: %w", err)
		}
	}
	return cmd(c, r, ".", "250")
}

// probeBanners connects every 50 ms until stop and returns how long each
// banner took.
func probeBanners(addr string, stop <-chan struct{}) []time.Duration {
	var got []time.Duration
	for {
		select {
		case <-stop:
			return got
		case <-time.After(50 * time.Millisecond):
		}
		t0 := time.Now()
		c, err := dialFrom(addr, "127.0.0.4")
		if err != nil {
			continue
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if b, err := readReply(bufio.NewReader(c)); err == nil && strings.HasPrefix(b, "220") {
			got = append(got, time.Since(t0))
		}
		io.WriteString(c, "QUIT\r\n")
		c.Close()
	}
}

// checkMaildir counts the messages in dir/new whose body (after the
// blank line that ends the header) is stored exactly.
func checkMaildir(dir string, stored []byte) (intact, bad int) {
	want := sha256.Sum256(stored)
	files, _ := os.ReadDir(filepath.Join(dir, "new"))
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, "new", f.Name()))
		i := bytes.Index(b, []byte("\r\n\r\n"))
		if err != nil || i < 0 || sha256.Sum256(b[i+4:]) != want {
			bad++
			continue
		}
		intact++
	}
	return intact, bad
}
