// Package rspamd is the rspamd plugin: at data_post it streams each
// message to rspamd's normal worker over HTTP (POST /checkv2, the
// envelope and the client in request headers) and turns rspamd's action
// into the client's reply: reject is 550 5.7.1, soft reject and greylist
// 451 4.7.1, add header and rewrite subject mark the message with
// X-Spam headers, no action accepts it. The headers rspamd asks for are
// added to the message; the score, action and symbols are recorded as a
// finding for the results plugin.
//
// The scan waits for the network, so it runs on the workpool; the HTTP
// connections to rspamd are kept alive and shared by all scans, at most
// threadpool_size of them idle. A circuit breaker answers at once, by the
// fail mode, while rspamd is down.
package rspamd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"loopmx/config"
	"loopmx/internal/breaker"
	"loopmx/internal/throttle"
	"loopmx/plugins"
)

// Name is the plugin's name in the plugins file; its settings are in
// rspamd.ini.
const Name = "rspamd"

// NoteKey is the transaction note that holds the Verdict of a scanned
// message, for later plugins.
const NoteKey = "rspamd"

// Defaults of rspamd.ini.
const (
	DefaultURL         = "http://127.0.0.1:11333"
	DefaultScanTimeout = 10 * time.Second
	DefaultMaxSize     = 10 << 20
)

func init() { plugins.Register(Name, setup) }

// Rspamd is the plugin: where rspamd listens, how to talk to it, and what
// to do when it cannot answer.
type Rspamd struct {
	endpoint    string // the URL of /checkv2
	password    string
	scanTimeout time.Duration
	maxSize     int64
	failOpen    bool   // fail = open
	greylist    bool   // greylist = tempfail (else rspamd's greylist is ignored)
	headers     string // headers = always | spam | off

	client  *http.Client
	breaker *breaker.Breaker

	// Failures are logged at most once a minute; each unsupported request
	// of rspamd once per process.
	failLog      throttle.Throttle
	unknownOnce  sync.Once
	breakerSetup sync.Once
}

// setup reads rspamd.ini.
func setup(cfg *config.Config) (plugins.Plugin, error) {
	pc, err := cfg.Plugin(Name)
	if err != nil {
		return nil, err
	}
	rawURL := pc.String("", "url", DefaultURL)
	scanTimeout := pc.Duration("", "scan_timeout", DefaultScanTimeout)
	maxSize := pc.Int64("", "max_size", DefaultMaxSize)
	failOpen := pc.Choice("", "fail", "tempfail", "open", "tempfail") == "open"
	greylist := pc.Choice("", "greylist", "tempfail", "tempfail", "accept") == "tempfail"
	headers := pc.Choice("", "headers", "always", "always", "spam", "off")
	password := pc.String("", "password", "")
	if err := pc.Check(); err != nil {
		return nil, err
	}
	bad := func(key, value, why string) error {
		return fmt.Errorf("config: %s: [main] %s: %q %s", pc.File(), key, value, why)
	}
	p := &Rspamd{password: password, scanTimeout: scanTimeout, maxSize: maxSize,
		failOpen: failOpen, greylist: greylist, headers: headers,
		failLog: throttle.Throttle{Every: time.Minute}}
	base, dial, err := parseURL(rawURL)
	if err != nil {
		return nil, bad("url", rawURL, err.Error())
	}
	p.endpoint = base + "/checkv2"
	if scanTimeout <= 0 {
		return nil, bad("scan_timeout", scanTimeout.String(), "must be more than 0")
	}
	if scanTimeout >= pc.Timeout() {
		return nil, bad("scan_timeout", scanTimeout.String(),
			fmt.Sprintf("must be less than timeout (%s), the chain's limit for the whole hook", pc.Timeout()))
	}
	if maxSize < 0 {
		return nil, bad("max_size", pc.String("", "max_size", ""), "must not be negative (0 scans every message)")
	}
	// One scan holds one workpool worker, so threadpool_size connections
	// are the most that can be busy at once: keep that many alive.
	conns := max(cfg.Main.ThreadpoolSize, 1)
	p.client = &http.Client{Transport: &http.Transport{
		DialContext:           dial,
		MaxIdleConns:          conns,
		MaxIdleConnsPerHost:   conns,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: scanTimeout,
		DisableCompression:    true,
	}}
	p.breaker = breaker.New("rspamd "+rawURL, breaker.Options{})
	return p, nil
}

// parseURL checks url and returns the base to which /checkv2 is added and
// how to dial it: "http://host:port" over TCP, or "unix:/path" for
// rspamd's unix socket.
func parseURL(raw string) (string, func(ctx context.Context, network, addr string) (net.Conn, error), error) {
	var d net.Dialer
	if path, ok := strings.CutPrefix(raw, "unix:"); ok {
		if !strings.HasPrefix(path, "/") {
			return "", nil, errors.New("needs an absolute path (unix:/run/rspamd/normal.sock)")
		}
		dial := func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "unix", path) }
		return "http://rspamd", dial, nil
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Host == "" || u.Port() == "" || u.RawQuery != "" || u.User != nil {
		return "", nil, errors.New("is not http://host:port or unix:/path")
	}
	return strings.TrimSuffix(u.String(), "/"), d.DialContext, nil
}

// Name implements plugins.Plugin.
func (*Rspamd) Name() string { return Name }

// Blocks implements plugins.Blocker: the scan waits for rspamd.
func (*Rspamd) Blocks(h plugins.Hook) bool { return h == plugins.HookDataPost }

// BlocksConn implements plugins.ConnBlocker: while the breaker says
// rspamd is down, the hook answers by the fail mode on the event loop.
func (p *Rspamd) BlocksConn(c *plugins.Conn, h plugins.Hook) bool {
	if h != plugins.HookDataPost {
		return false
	}
	if p.breaker.Ready() {
		return true
	}
	// The back-off could end before DataPost runs; DataPost must not make
	// the probe on the event loop then.
	if c.Tx != nil {
		c.Tx.SetNote(inlineKey, true)
	}
	return false
}

// inlineKey tells DataPost that it runs on the event loop.
const inlineKey = "rspamd.inline"

// Close implements plugins.Closer: idle connections to rspamd are closed.
func (p *Rspamd) Close() error {
	p.client.CloseIdleConnections()
	return nil
}

// Replies of our own.
var (
	replyFailed = plugins.DenySoft(451, "4.7.1", "Content scanner unavailable, try again later")
)

// DataPost implements plugins.DataPostHook.
func (p *Rspamd) DataPost(c *plugins.Conn, m *plugins.Message) plugins.Result {
	log := c.Logger()
	p.breakerSetup.Do(func() { p.breaker.SetLogger(c.Log) })
	if c.Tx == nil {
		log.Error().Str("plugin", Name).Msg("data_post hook called without a transaction")
		return plugins.InternalError()
	}
	if p.maxSize > 0 && m.Size() > p.maxSize {
		c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Skip,
			Message: fmt.Sprintf("not scanned: %d octets, over max_size %d", m.Size(), p.maxSize)})
		return plugins.NoOpinion()
	}
	if inline, _ := c.Tx.Note(inlineKey).(bool); inline {
		c.Tx.SetNote(inlineKey, nil)
		return p.failed(c, log, breaker.ErrOpen)
	}
	call, err := p.breaker.Begin()
	if err != nil {
		return p.failed(c, log, err)
	}
	v, err := p.scan(c, m)
	call.Done(err)
	if err != nil {
		return p.failed(c, log, err)
	}
	c.Tx.SetNote(NoteKey, v)
	return p.apply(c, m, log, v)
}

// failed answers a scan that could not be made, by the fail mode.
func (p *Rspamd) failed(c *plugins.Conn, log *zerolog.Logger, err error) plugins.Result {
	mode := "tempfail"
	if p.failOpen {
		mode = "open"
	}
	c.Record(plugins.Finding{Plugin: Name, Outcome: plugins.Err, Message: "scan failed (fail = " + mode + ")"})
	if ok, held := p.failLog.Allow(time.Now()); ok {
		log.Warn().Str("plugin", Name).Str("tx", c.Tx.ID).Err(err).Str("fail", mode).
			Int64("not_logged", held).Msg("rspamd scan failed")
	}
	if p.failOpen {
		return plugins.NoOpinion()
	}
	return replyFailed
}

// scan sends the message to rspamd and reads its verdict. The body is
// streamed from the message (memory or spool file): loopmx's Received
// header, the fields earlier plugins added, then the message as received,
// which is the message as it will be stored.
func (p *Rspamd) scan(c *plugins.Conn, m *plugins.Message) (*Verdict, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.scanTimeout)
	defer cancel()
	head := c.AppendReceived(make([]byte, 0, 256), m.Protocol, time.Now())
	head = append(head, m.AddedHeaders()...)
	body := io.MultiReader(bytes.NewReader(head), m.Reader())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint, body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = int64(len(head)) + m.Size()
	p.setHeaders(req.Header, c)
	resp, err := p.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			err = breaker.AsTimeout(err)
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("rspamd answered HTTP %s", resp.Status)
	}
	return decode(io.LimitReader(resp.Body, maxReply))
}

// maxReply bounds rspamd's JSON reply (symbols with options can be long,
// never megabytes).
const maxReply = 4 << 20

// setHeaders writes the envelope and the client into the request
// headers of rspamd's protocol.
func (p *Rspamd) setHeaders(h http.Header, c *plugins.Conn) {
	from := c.Tx.From
	if from == "" {
		from = "<>"
	}
	h.Set("From", from)
	for _, r := range c.Tx.Rcpts {
		h.Add("Rcpt", r)
	}
	h.Set("IP", c.RemoteIP.Unmap().String())
	if c.Helo != "" {
		h.Set("Helo", c.Helo)
	}
	if name, ok := c.Note(plugins.RDNSNote).(string); ok && name != "" {
		h.Set("Hostname", strings.TrimSuffix(name, "."))
	}
	h.Set("Queue-Id", c.Tx.ID)
	h.Set("MTA-Name", c.Hostname)
	if c.TLS != nil {
		h.Set("TLS-Version", plugins.TLSVersionName(c.TLS.Version))
	}
	if p.password != "" {
		h.Set("Password", p.password)
	}
	h.Set("Content-Type", "message/rfc822")
}

var (
	_ plugins.DataPostHook = (*Rspamd)(nil)
	_ plugins.Blocker      = (*Rspamd)(nil)
	_ plugins.ConnBlocker  = (*Rspamd)(nil)
	_ plugins.Closer       = (*Rspamd)(nil)
)
