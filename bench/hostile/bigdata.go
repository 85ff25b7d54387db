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

// runBigData: -n clients each send one message of -size octets at -rate
// octets a second, all at once, and then stay connected without QUIT.
// With -pid it reports the server's resident memory: before, its peak
// (VmHWM) and after the messages, once the clients idle; with -spool it
// checks that every message is in the Maildir, whole.
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
	for i := range o.n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := bigSession(o, i, wire, deadline)
			conns[i] = c
			if err != nil {
				failed.Add(1)
				mu.Lock()
				errs[err.Error()]++
				mu.Unlock()
				return
			}
			ok.Add(1)
		}()
	}
	wg.Wait()
	took := time.Since(start)
	peak, idle := int64(0), int64(0)
	if o.pid > 0 {
		peak = procStatus(o.pid, "VmHWM:")
		idle = settledRSS(o.pid, 30*time.Second)
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	fmt.Fprintf(out, "bigdata: %d clients, each one message of %d MiB at %d KiB/s, then idle without QUIT; took %v\n",
		o.n, o.size>>20, o.rate>>10, took.Round(time.Second))
	fmt.Fprintf(out, "replies: %d x 250, %d failed\n", ok.Load(), failed.Load())
	for e, k := range errs {
		fmt.Fprintf(out, "  %d x %s\n", k, e)
	}
	pass := failed.Load() == 0
	if o.pid > 0 {
		fmt.Fprintf(out, "server memory: VmRSS %d MB before, VmHWM (peak) %d MB, VmRSS %d MB with every client idle after its message\n",
			before>>20, peak>>20, idle>>20)
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

// bigSession sends one paced message and returns the open connection.
func bigSession(o options, i int, wire []byte, deadline time.Time) (net.Conn, error) {
	c, err := dialFrom(o.addr, fmt.Sprintf("127.0.2.%d", 1+i%o.sources))
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	c.SetDeadline(deadline)
	r := bufio.NewReader(c)
	if b, err := readReply(r); err != nil || !strings.HasPrefix(b, "220") {
		return c, fmt.Errorf("banner: %q %v", b, err)
	}
	for _, step := range [][2]string{{"EHLO big.test", "250"}, {"MAIL FROM:<big@big.test> SIZE=" + strconv.Itoa(len(wire)+64), "250"}, {"RCPT TO:<postmaster>", "250"}, {"DATA", "354"}} {
		if err := cmd(c, r, step[0], step[1]); err != nil {
			return c, err
		}
	}
	if _, err := io.WriteString(c, "Subject: big "+strconv.Itoa(i)+"\r\n\r\n"); err != nil {
		return c, err
	}
	// Chunks every 100 ms at the rate.
	chunk := max(o.rate/10, 1)
	next := time.Now()
	for off := 0; off < len(wire); off += chunk {
		time.Sleep(time.Until(next))
		next = next.Add(100 * time.Millisecond)
		if _, err := c.Write(wire[off:min(off+chunk, len(wire))]); err != nil {
			return c, fmt.Errorf("body: %w", err)
		}
	}
	if err := cmd(c, r, ".", "250"); err != nil {
		return c, err
	}
	return c, nil
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

// settledRSS waits until a process's VmRSS stops falling (the runtime
// gives freed memory back over a few seconds), at most wait.
func settledRSS(pid int, wait time.Duration) int64 {
	end := time.Now().Add(wait)
	last := procStatus(pid, "VmRSS:")
	for time.Now().Before(end) {
		time.Sleep(2 * time.Second)
		now := procStatus(pid, "VmRSS:")
		if now >= last-1<<20 {
			return now
		}
		last = now
	}
	return last
}
