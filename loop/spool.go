package loop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"loopmx/plugins"
)

// Message bodies beyond a small head go to disk as they arrive
// (smtp.ini spool_after), so that memory does not grow with the bytes in
// flight: a session writes its body buffer to a spool file whenever it
// holds spool_after octets, and earlier when the in-memory bodies of all
// sessions pass max_body_memory. The writes are batched (one write per
// spool_after octets) and go to the page cache; the event loop does not
// wait on the disk beyond that. The file is unnamed (O_TMPFILE, or
// unlinked at once where that is missing), so a session that dies, and
// a process that crashes, leave nothing behind.

// smallBody is what a body buffer may hold before it counts toward
// max_body_memory: the session's first buffer, which every message
// takes.
const smallBody = 8 << 10

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
	if len(b) >= srv.spoolAfter || (pressed && len(b) > 0) {
		c.spill(pressed)
	}
}

// account keeps the server's count of body memory in step with this
// session's buffer capacity beyond the first buffer.
func (c *conn) account(capacity int) {
	held := max(capacity-smallBody, 0)
	if held != c.held {
		c.srv.bodyMem.Add(int64(held - c.held))
		c.held = held
	}
}

// spill writes the session's body buffer to the spool file. shrink gives
// a large buffer back (the server is short of memory). A failure stops
// keeping the message; its end is then answered 451.
func (c *conn) spill(shrink bool) {
	if c.spoolErr != nil {
		return
	}
	if c.spool == nil {
		f, err := c.srv.openSpool()
		if err != nil {
			c.spoolFailed(err)
			return
		}
		c.spool = f
	}
	b := c.sess.Body()
	if _, err := c.spool.Write(b); err != nil {
		c.spoolFailed(err)
		return
	}
	c.spooled += int64(len(b))
	c.sess.Spilled(shrink)
	c.account(cap(c.sess.Body()))
}

// spoolFailed gives the message up: it could not be kept, so it will be
// refused at its end (never acknowledged).
func (c *conn) spoolFailed(err error) {
	c.spoolErr = err
	c.srv.log.Error().Str("conn", c.view.ID).Err(err).Msg("cannot write the message to spool_dir; it will be refused with 451")
	c.sess.DropBody()
	c.closeSpool()
}

// message makes the Message of a complete body: in memory when it never
// spilled, else in the spool file with the rest of the buffer written
// after it. nil means the body could not be kept.
func (c *conn) message() *plugins.Message {
	proto := c.sess.Protocol()
	if c.spoolErr != nil {
		return nil
	}
	if c.spool == nil {
		c.account(0)
		return plugins.NewMessage(c.sess.Body(), proto)
	}
	if c.spill(false); c.spoolErr != nil {
		return nil
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
		c.spool.Close()
		c.spool, c.spooled = nil, 0
	}
	c.account(0)
}

// releaseMessage ends the message of the transaction: its spool file is
// closed and its buffers dropped, whatever still holds the hook call.
func (c *conn) releaseMessage() {
	if c.msg != nil {
		c.msg.Release()
		c.msg = nil
	}
	c.call.Msg = nil
	c.closeSpool()
	c.spoolErr = nil
}
