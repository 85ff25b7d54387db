// Package maildir is the queue/maildir plugin: every accepted message is
// written to a Maildir spool and made durable before the client hears 250.
//
// The order is the Maildir delivery protocol with fsyncs added where a
// crash could otherwise lose an acknowledged message: write the file in
// tmp/, fsync it, rename it into new/, fsync new/. Only then does the
// plugin accept. A failure anywhere answers 451 4.3.0, removes the file
// from tmp/, and never leaves a partial file in new/.
package maildir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"loopmx/config"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "queue/maildir"

func init() { plugins.Register(Name, setup) }

// Maildir writes messages into one Maildir.
type Maildir struct {
	dir    string
	acct   config.Account // who the server runs as, for messages
	newDir *os.File       // kept open for fsync after each rename; set by Start
	host   string
	pid    string
	seq    atomic.Uint64
	now    func() time.Time
}

// setup reads maildir.ini and checks, without changing anything, that
// the account the server runs as can use the spool or create it.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	dir := pc.Path("", "path", "./var/spool")
	if err := pc.Check(); err != nil {
		return nil, err
	}
	acct, err := cfg.RunAs()
	if err != nil {
		return nil, err
	}
	m := New(dir, cfg.Main.Hostname)
	m.acct = acct
	if _, err := checkSpool(dir, acct); err != nil {
		return nil, fmt.Errorf("config: %s: path = %s: %w", pc.File(), dir, err)
	}
	return m, nil
}

// New returns the plugin for the Maildir at dir without touching it;
// Start creates and opens it. hostname goes into the file names (the
// machine's host name when empty).
func New(dir, hostname string) *Maildir {
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	return &Maildir{dir: dir, host: safeHost(hostname), pid: strconv.Itoa(os.Getpid()), now: time.Now}
}

// Open is New followed by Start: it creates (if needed) and opens the
// Maildir at dir.
func Open(dir, hostname string) (*Maildir, error) {
	m := New(dir, hostname)
	if err := m.Start(); err != nil {
		return nil, err
	}
	return m, nil
}

// Start implements plugins.Starter: it creates the spool and its tmp/,
// new/ and cur/ when they are missing (mode 0700, owned by the account
// the process runs as), checks that this process can write tmp/ and
// new/, and opens new/ for the fsync after each delivery. A spool it
// cannot write stops the start, so that no client is ever told 451 for
// it.
func (m *Maildir) Start() error {
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(m.dir, sub), 0o700); err != nil {
			return fmt.Errorf("maildir.ini: path = %s: %w", m.dir, err)
		}
	}
	for _, sub := range []string{"tmp", "new"} {
		p := filepath.Join(m.dir, sub)
		if err := unix.Faccessat(unix.AT_FDCWD, p, unix.W_OK|unix.X_OK, unix.AT_EACCESS); err != nil {
			return fmt.Errorf("maildir.ini: path = %s: %s/ is not writable by uid %d, which this process runs as: %w", m.dir, sub, os.Geteuid(), err)
		}
	}
	nd, err := os.Open(filepath.Join(m.dir, "new"))
	if err != nil {
		return fmt.Errorf("maildir.ini: path = %s: %w", m.dir, err)
	}
	m.newDir = nd
	return nil
}

// Plan implements plugins.Planner: what Start will find or create.
func (m *Maildir) Plan() string {
	plan, err := checkSpool(m.dir, m.acct)
	if err != nil {
		return "spool " + m.dir + ": " + err.Error()
	}
	return plan
}

// safeHost makes the host part of a Maildir file name: '/' and ':' are not
// allowed there.
func safeHost(h string) string {
	b := []byte(h)
	for i, c := range b {
		if c == '/' || c == ':' {
			b[i] = '_'
		}
	}
	return string(b)
}

// Name implements plugins.Plugin.
func (m *Maildir) Name() string { return Name }

// Blocks implements plugins.Blocker: writing and fsyncing wait on the disk.
func (m *Maildir) Blocks(h plugins.Hook) bool { return h == plugins.HookQueue }

// Close implements plugins.Closer. It does nothing when Start did not
// open the spool.
func (m *Maildir) Close() error {
	if m.newDir == nil {
		return nil
	}
	return m.newDir.Close()
}

// Queue implements plugins.QueueHook.
func (m *Maildir) Queue(c *plugins.Conn, msg *plugins.Message) plugins.Result {
	now := m.now()
	name := m.fileName(now)
	if err := m.deliver(c, msg, name, now); err != nil {
		c.Log.Error().Err(err).Str("plugin", Name).Str("tx", txID(c)).Msg("cannot store message")
		return plugins.InternalError()
	}
	return plugins.Queued(c, "")
}

func (m *Maildir) deliver(c *plugins.Conn, msg *plugins.Message, name string, now time.Time) (err error) {
	tmp := filepath.Join(m.dir, "tmp", name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	head := m.header(c, msg, now)
	if _, err = f.Write(head); err != nil {
		return err
	}
	// The fields plugins added, then the body: a spooled body is copied
	// from the spool file inside the kernel.
	if _, err = msg.WriteTo(f); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, filepath.Join(m.dir, "new", name)); err != nil {
		return err
	}
	if err = m.newDir.Sync(); err != nil {
		// The file is in new/ but its name may not survive a crash; the
		// client is told 451 and will retry (a duplicate at worst).
		return errors.Join(errors.New("fsync of new/ failed"), err)
	}
	return nil
}

// header is what loopmx adds in front of the message: Return-Path (RFC 5321
// 4.4), one X-Envelope-To per envelope recipient, and the Received trace
// header.
func (m *Maildir) header(c *plugins.Conn, msg *plugins.Message, now time.Time) []byte {
	b := make([]byte, 0, 512)
	if c.Tx != nil {
		b = append(b, "Return-Path: <"...)
		b = append(b, c.Tx.From...)
		b = append(b, ">\r\n"...)
		for _, r := range c.Tx.Rcpts {
			b = append(b, "X-Envelope-To: <"...)
			b = append(b, r...)
			b = append(b, ">\r\n"...)
		}
	}
	return c.AppendReceived(b, msg.Protocol, now)
}

// fileName follows the Maildir naming rule "time.unique.host" with a
// unique part made of microseconds, pid and a per-process counter.
func (m *Maildir) fileName(now time.Time) string {
	b := make([]byte, 0, 64)
	b = strconv.AppendInt(b, now.Unix(), 10)
	b = append(b, ".M"...)
	b = strconv.AppendInt(b, int64(now.Nanosecond()/1000), 10)
	b = append(b, 'P')
	b = append(b, m.pid...)
	b = append(b, 'Q')
	b = strconv.AppendUint(b, m.seq.Add(1), 10)
	b = append(b, '.')
	b = append(b, m.host...)
	return string(b)
}

func txID(c *plugins.Conn) string {
	if c.Tx != nil {
		return c.Tx.ID
	}
	return c.ID
}

var (
	_ plugins.QueueHook = (*Maildir)(nil)
	_ plugins.Blocker   = (*Maildir)(nil)
	_ plugins.Starter   = (*Maildir)(nil)
	_ plugins.Planner   = (*Maildir)(nil)
	_ plugins.Closer    = (*Maildir)(nil)
)
