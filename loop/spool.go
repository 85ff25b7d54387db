package loop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"loopmx/plugins"
)

// Message bodies beyond a small head go to disk as they arrive
// (smtp.ini spool_after), so that memory does not grow with the bytes in
// flight: a session writes its body buffer to a spool file whenever it
// holds spool_after octets, and earlier when the in-memory bodies of all
// sessions pass max_body_memory. The writes are batched (one write per
// spool_after octets) and run on the server's spool writers, never on
// the event loop: a write to the page cache usually takes microseconds,
// but under writeback pressure one was seen to take 1.4 s, and the loop
// must keep answering banners meanwhile. While its write is in flight a
// session reads no further than its input buffer. The file is unnamed
// (O_TMPFILE, or unlinked at once where that is missing), so a session
// that dies, and a process that crashes, leave nothing behind.

// smallBody is what a body buffer may hold before it counts toward
// max_body_memory: the session's first buffer, which every message
// takes.
const smallBody = 8 << 10

// spoolWriters is how many goroutines write spool files: enough that one
// write stuck in the kernel's writeback does not hold up the others.
const spoolWriters = 4

// spillPrefix names the spool files of the fallback that links them for
// a moment; the start removes any a crash left there.
const spillPrefix = "loopmx-spill-"

// prepareSpool creates the spool directory and removes spool files left
// by a crash.
func prepareSpool(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("smtp.ini: spool_dir = %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("smtp.ini: spool_dir = %s: %w", dir, err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), spillPrefix) {
			// Another worker's file may be named for a moment too; it
			// holds its descriptor and loses only the name.
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	f, err := openSpool(dir)
	if err != nil {
		return fmt.Errorf("smtp.ini: spool_dir = %s: cannot create a spool file: %w", dir, err)
	}
	f.Close()
	return nil
}

// openSpoolFallback makes a spool file that has a name for a moment.
func openSpoolFallback(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, spillPrefix+"*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
		f.Close()
		return nil, err
	}
	return f, nil
}

// spillCheck runs whenever the session has consumed the input: it counts
// the body buffer toward max_body_memory and spills it when it holds
// spool_after octets, or any octets past the first buffer while the
// server is over its budget.
func (c *conn) spillCheck() {
	srv := c.srv
	b := c.sess.Body()
	if srv.spoolAfter <= 0 || (cap(b) <= smallBody && c.held == 0) {
		return
	}
	c.account(cap(b))
	pressed := srv.maxBodyMem > 0 && c.held > 0 && srv.bodyMem.Load() > srv.maxBodyMem
	// Spill one read before spool_after: the next read then still fits,
	// and the buffer never doubles past spool_after (a 64 KiB buffer also
	// goes back to the session pool and serves the next message).
	if len(b) >= max(srv.spoolAfter-srv.inCap, smallBody) || (pressed && len(b) > 0) {
		c.spill(pressed)
	}
}

// account keeps the server's count of body memory in step with this
// session's buffer capacity beyond the first buffer.
func (c *conn) account(capacity int) {
	held := max(capacity-smallBody, 0)
	if held == c.held {
		return
	}
	srv := c.srv
	now := srv.bodyMem.Add(int64(held - c.held))
	if held > c.held {
		if now > srv.bodyPeak.Load() {
			srv.bodyPeak.Store(now)
		}
	} else if now == 0 && srv.bodyPeak.Load() >= burstMemory {
		srv.giveMemoryBack()
	}
	c.held = held
}

// burstMemory is the body memory past which the end of the burst gives
// the memory back to the system at once.
const burstMemory = 8 << 20

// giveMemoryBack returns the memory of a burst of large bodies to the
// system once no session holds one: the Go runtime would otherwise keep
// it until its periodic collection (two minutes when nothing allocates)
// and then give it back over minutes more (300 x 10 MiB at once: 54 MB
// for two minutes, 14 MB after four). At most once per 10 s, off the
// event loop (collections of what is left: a small heap).
func (s *Server) giveMemoryBack() {
	s.bodyPeak.Store(0)
	now := time.Now().UnixNano()
	last := s.lastGiveBack.Load()
	if now-last < int64(10*time.Second) || !s.lastGiveBack.CompareAndSwap(last, now) {
		return
	}
	// A second later, when the last sessions have dropped their buffers:
	// two collections (the first moves the recycled body buffers out of
	// sync.Pool's cache, the second frees them), then the pages go back.
	time.AfterFunc(time.Second, func() {
		runtime.GC()
		debug.FreeOSMemory()
	})
}

// spillJob is one write of a session's body buffer, run by a spool
// writer. It opens the spool file for the first one.
type spillJob struct {
	dir    string
	f      *os.File
	buf    []byte
	shrink bool
	n      int
	err    error

	mu        sync.Mutex
	done      bool // the write returned
	abandoned bool // the connection gave the job up: whoever comes last closes f
}

func (j *spillJob) run() plugins.Result {
	if j.f == nil {
		j.f, j.err = openSpool(j.dir)
	}
	if j.err == nil {
		j.n, j.err = j.f.Write(j.buf)
	}
	j.mu.Lock()
	j.done = true
	orphan := j.abandoned
	j.mu.Unlock()
	if orphan && j.f != nil {
		j.f.Close()
	}
	return plugins.Result{}
}

// abandon gives the job's file up: it is closed now if the write has
// returned, else by the writer when it does.
func (j *spillJob) abandon() {
	j.mu.Lock()
	j.abandoned = true
	done := j.done
	j.mu.Unlock()
	if done && j.f != nil {
		j.f.Close()
	}
}

// spill hands the session's body buffer to a spool writer; the session
// parses nothing until the write is done (spillDone). shrink gives a
// large buffer back afterwards (the server is short of memory). A failure
// stops keeping the message; its end is then answered 451.
func (c *conn) spill(shrink bool) {
	if c.spoolErr != nil {
		return
	}
	j := &spillJob{dir: c.srv.spoolDir, f: c.spool, buf: c.sess.Body(), shrink: shrink}
	c.spilling = j
	c.pending = true
	c.gen++
	if !c.tr.await(c.srv.spillPool, j.run, (*spillWait)(c), c.gen, c.srv.opts.CommandTimeout) {
		c.spilling = nil
		c.pending = false
		c.spoolFailed(errors.New("the spool writers' queue is full"))
	}
}

func (w *spillWait) returned(plugins.Result) { (*conn)(w).spillDone() }
func (w *spillWait) expired()                { (*conn)(w).spillExpired() }

// spillDone runs on the connection's transport when its write returned.
func (c *conn) spillDone() {
	j := c.spilling
	c.spilling = nil
	c.pending = false
	if j.err != nil {
		if j.f != nil {
			j.f.Close()
		}
		c.spool = nil
		c.spoolFailed(j.err)
	} else {
		c.spool = j.f
		c.spooled += int64(j.n)
		c.sess.Spilled(j.shrink)
		c.account(cap(c.sess.Body()))
	}
	c.messageWaited()
}

// spillExpired gives up a write that outlasted command_timeout: the disk
// is stuck. The message is refused at its end; the writer closes the
// file when its write returns.
func (c *conn) spillExpired() {
	j := c.spilling
	c.spilling = nil
	c.pending = false
	c.gen++
	c.sess.DetachBody() // the writer may still read the buffer
	j.abandon()
	c.spool = nil
	c.spoolFailed(errors.New("a write to spool_dir took longer than command_timeout"))
	if c.closed {
		c.finish()
		return
	}
	c.messageWaited()
}

// messageWaited goes on with a message that waited for its last spool
// write, once the write returned or was given up.
func (c *conn) messageWaited() {
	if c.msgWait {
		c.msgWait = false
		c.messageReady(plugins.Call{Hook: c.msgHook})
	}
}

// endOfMessage runs the hooks of a complete message once its last part
// is in the spool file (a spilled body) or at once (a body in memory).
func (c *conn) endOfMessage(call plugins.Call) {
	if c.spool != nil && c.spoolErr == nil && len(c.sess.Body()) > 0 {
		c.msgHook, c.msgWait = call.Hook, true
		c.spill(false)
		if c.pending || !c.msgWait {
			// spillDone goes on (the stream transport waits for the
			// write in place, so it may have done so already).
			return
		}
		c.msgWait = false // the write did not start
	}
	c.messageReady(call)
}

// messageReady runs the hooks of a complete message, or answers 451 when
// its body could not be kept.
func (c *conn) messageReady(call plugins.Call) {
	if c.msg = c.message(); c.msg == nil {
		res := plugins.DenySoft(451, "4.3.0", "Cannot store the message now; try again later")
		res.Plugin = "spool"
		c.resolve(call, res)
		return
	}
	call.Msg = c.msg
	c.runHook(call, 0)
}

// spoolFailed gives the message up: it could not be kept, so it will be
// refused at its end (never acknowledged).
func (c *conn) spoolFailed(err error) {
	c.spoolErr = err
	c.tr.logger().Error().Str("conn", c.view.ID).Err(err).Msg("cannot write the message to spool_dir; it will be refused with 451")
	c.sess.DropBody()
	c.closeSpool()
}

// message makes the Message of a complete body: in memory when it never
// spilled, else in the spool file, which by now holds all of it. nil
// means the body could not be kept.
func (c *conn) message() *plugins.Message {
	proto := c.sess.Protocol()
	if c.spoolErr != nil {
		return nil
	}
	if c.spool == nil {
		c.account(0)
		if c.msgMem == nil || !c.private() {
			c.msgMem = new(plugins.Message)
		}
		return plugins.NewMessageIn(c.msgMem, c.sess.Body(), proto)
	}
	m := plugins.NewSpooledMessage(c.spool, c.spooled, proto)
	c.spool, c.spooled = nil, 0 // the message owns the file now
	c.account(0)
	return m
}

// closeSpool drops the spool file of a body that did not become a
// message, and the body's share of the memory budget.
func (c *conn) closeSpool() {
	if c.spool != nil {
		c.srv.release(c.spool.Close)
		c.spool, c.spooled = nil, 0
	}
	c.account(0)
}

// release runs close, the end of a spool file, on the spool writers: the
// last close of an unlinked file frees its pages and blocks, which can
// take a while for megabytes. Inline when the writers' queue is full.
func (s *Server) release(close func() error) {
	if s.spillPool == nil || !s.spillPool.Submit(func() { close() }) {
		close()
	}
}

// releaseMessage ends the message of the transaction: its spool file is
// closed and its buffers dropped, whatever still holds the hook call.
func (c *conn) releaseMessage() {
	if j := c.spilling; j != nil {
		// A connection that ended during a write (finish runs after
		// the write returned or expired).
		c.spilling = nil
		j.abandon()
		if j.f == c.spool {
			c.spool = nil
		}
	}
	c.msgWait = false
	if m := c.msg; m != nil {
		c.msg = nil
		if m.Spooled() {
			c.srv.release(func() error { m.Release(); return nil })
		} else {
			m.Release()
		}
	}
	c.call.Msg = nil
	c.closeSpool()
	c.spoolErr = nil
}
