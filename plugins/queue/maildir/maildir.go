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

	"loopmx/config"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file.
const Name = "queue/maildir"

func init() { plugins.Register(Name, setup) }

// Maildir writes messages into one Maildir.
type Maildir struct {
	dir    string
	newDir *os.File // kept open for fsync after each rename
	host   string
	pid    string
	seq    atomic.Uint64
	now    func() time.Time
}

func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	dir := pc.Path("", "path", "./var/spool")
	if err := pc.Check(); err != nil {
		return nil, err
	}
	return Open(dir, cfg.Main.Me)
}

// Open creates (if needed) and opens the Maildir at dir.
func Open(dir, hostname string) (*Maildir, error) {
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("plugin/%s: maildir.ini: path: %w", Name, err)
		}
	}
	nd, err := os.Open(filepath.Join(dir, "new"))
	if err != nil {
		return nil, fmt.Errorf("plugin/%s: maildir.ini: path: %w", Name, err)
	}
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	return &Maildir{dir: dir, newDir: nd, host: safeHost(hostname), pid: strconv.Itoa(os.Getpid()), now: time.Now}, nil
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

// Close implements plugins.Closer.
func (m *Maildir) Close() error { return m.newDir.Close() }

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
	if _, err = f.Write(msg.Body); err != nil {
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

var _ plugins.QueueHook = (*Maildir)(nil)
var _ plugins.Blocker = (*Maildir)(nil)
