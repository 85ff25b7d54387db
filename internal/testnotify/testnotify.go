// Package testnotify stands in for systemd's NOTIFY_SOCKET in tests: a
// unixgram socket that records each sd_notify message with the pid of its
// sender (SO_PASSCRED), as systemd checks it for NotifyAccess=main.
package testnotify

import (
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Msg is one message received.
type Msg struct {
	Text string
	Pid  int32 // the sender's pid, 0 when the kernel did not say
	At   time.Time
}

// Socket is the listening socket; Path is what NOTIFY_SOCKET names.
type Socket struct {
	Path    string
	mu      sync.Mutex
	msgs    []Msg
	onReady func()
}

// Listen opens a socket in the test's temporary directory, closed when
// the test ends. onReady, when not nil, runs on the first READY=1, before
// the message is recorded.
func Listen(t testing.TB, onReady func()) *Socket {
	t.Helper()
	n := &Socket{Path: filepath.Join(t.TempDir(), "notify"), onReady: onReady}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.Path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1) })
	go n.read(c)
	return n
}

func (n *Socket) read(c *net.UnixConn) {
	buf, oob := make([]byte, 4096), make([]byte, 1024)
	readyDone := false
	for {
		k, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		m := Msg{Text: string(buf[:k]), At: time.Now()}
		if cms, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, cm := range cms {
				if cred, err := syscall.ParseUnixCredentials(&cm); err == nil {
					m.Pid = cred.Pid
				}
			}
		}
		if !readyDone && strings.HasPrefix(m.Text, "READY=1") && n.onReady != nil {
			readyDone = true
			n.onReady()
		}
		n.mu.Lock()
		n.msgs = append(n.msgs, m)
		n.mu.Unlock()
	}
}

// All returns the messages so far.
func (n *Socket) All() []Msg {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}

// Texts returns the texts of the messages so far.
func (n *Socket) Texts() []string {
	var out []string
	for _, m := range n.All() {
		out = append(out, m.Text)
	}
	return out
}

// Index returns the index of the first message at or after from that
// starts with prefix, or -1.
func (n *Socket) Index(prefix string, from int) int {
	msgs := n.All()
	for i := from; i < len(msgs); i++ {
		if strings.HasPrefix(msgs[i].Text, prefix) {
			return i
		}
	}
	return -1
}

// WaitFor waits up to d for such a message and returns its index, or -1.
func (n *Socket) WaitFor(prefix string, from int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		if i := n.Index(prefix, from); i >= 0 || time.Now().After(deadline) {
			return i
		}
		time.Sleep(5 * time.Millisecond) // a poll interval, not a wait for time to pass
	}
}
