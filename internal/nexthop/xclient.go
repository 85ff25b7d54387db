package nexthop

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"loopmx/plugins"
)

// ClientMode says how the next hop is told who the client was
// (xclient = off | xclient | xforward | auto).
type ClientMode uint8

const (
	// ClientOff sends nothing: the next hop sees loopmx as the client.
	ClientOff ClientMode = iota
	// ClientXCLIENT sends Postfix's XCLIENT when the next hop offers it:
	// the next hop then treats the session as coming from the client
	// (its access rules, its logs and its Received header).
	ClientXCLIENT
	// ClientXFORWARD sends Postfix's XFORWARD when offered: the next hop
	// logs the client instead of loopmx; its access rules still see
	// loopmx.
	ClientXFORWARD
	// ClientAuto sends XFORWARD when offered, else XCLIENT when offered.
	ClientAuto
)

var clientModes = map[string]ClientMode{"off": ClientOff, "xclient": ClientXCLIENT, "xforward": ClientXFORWARD, "auto": ClientAuto}

// Client is what the next hop is told of the client that sent a message.
type Client struct {
	// Addr is the client's address: "192.0.2.1" or "IPV6:2001:db8::1".
	Addr string
	// Port is the client's port.
	Port string
	// Name is the client's verified reverse DNS name, or [UNAVAILABLE].
	Name string
	// Helo is the name it gave in HELO/EHLO, or [UNAVAILABLE].
	Helo string
	// Proto is SMTP or ESMTP.
	Proto string
}

// unavailable is the value Postfix's XCLIENT and XFORWARD take for an
// attribute that is not known.
const unavailable = "[UNAVAILABLE]"

// ClientOf describes the client of c for a message received with
// protocol (the Received "with" word).
func ClientOf(c *plugins.Conn, protocol string) *Client {
	ip := c.RemoteIP.Unmap()
	cl := &Client{Addr: ip.WithZone("").String(), Port: strconv.Itoa(int(c.RemotePort)), Name: unavailable, Helo: unavailable, Proto: "SMTP"}
	if ip.Is6() {
		cl.Addr = "IPV6:" + cl.Addr
	}
	if name, ok := c.Note(plugins.RDNSNote).(string); ok && name != "" {
		cl.Name = strings.TrimSuffix(name, ".")
	}
	if c.Helo != "" {
		cl.Helo = c.Helo
	}
	if strings.Contains(protocol, "ESMTP") || strings.HasPrefix(protocol, "UTF8") {
		cl.Proto = "ESMTP"
	}
	return cl
}

// clientVerb is the command that tells the next hop of env's client on
// session c in the configured mode: "XFORWARD", "XCLIENT", or "" when
// nothing is sent (mode off, no client, or the next hop offers neither).
func (f *Forwarder) clientVerb(c *conn, env *Envelope) string {
	if env.Client == nil {
		return ""
	}
	xf, xc := c.has("XFORWARD"), c.xclient != ""
	switch f.s.Client {
	case ClientXFORWARD, ClientAuto:
		if xf {
			return "XFORWARD"
		}
		if xc && f.s.Client == ClientAuto {
			return "XCLIENT"
		}
	case ClientXCLIENT:
		if xc {
			return "XCLIENT"
		}
	}
	return ""
}

// clientLines are the command lines that tell the next hop of cl: only
// the attributes it offered (after the keyword in its EHLO reply), each
// value as xtext (RFC 3461 4), several lines when one would pass 512
// octets (RFC 5321 4.5.3.1.4).
func clientLines(verb, offered string, cl *Client) []string {
	ok := map[string]bool{}
	for _, a := range strings.Fields(strings.ToUpper(offered)) {
		ok[a] = true
	}
	attrs := [][2]string{{"ADDR", cl.Addr}, {"PORT", cl.Port}, {"NAME", cl.Name}, {"HELO", cl.Helo}, {"PROTO", cl.Proto}}
	if verb == "XFORWARD" {
		attrs = append(attrs, [2]string{"SOURCE", "REMOTE"})
	}
	var lines []string
	line := verb
	for _, a := range attrs {
		if !ok[a[0]] {
			continue
		}
		kv := a[0] + "=" + xtext(a[1])
		if len(line)+1+len(kv) > 510 && line != verb {
			lines = append(lines, line)
			line = verb
		}
		line += " " + kv
	}
	if line != verb {
		lines = append(lines, line)
	}
	return lines
}

// xtext encodes s as RFC 3461 4 xtext: "+", "=" and octets outside 33-126
// as "+" and two upper-case hex digits.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch < 33 || ch > 126 || ch == '+' || ch == '=' {
			fmt.Fprintf(&b, "+%02X", ch)
			continue
		}
		b.WriteByte(ch)
	}
	return b.String()
}

// xclient tells the next hop of the client with XCLIENT, outside a
// transaction: each line is answered by a new 220 greeting, after which
// the session starts again with EHLO (Postfix's XCLIENT_README), given
// with the client's HELO name, since a new EHLO sets the name the next
// hop records. The session is then the client's: it goes back to no pool
// (conn.switched). A refusal is no failure: the message goes on without
// it, and the refusal is returned for the log.
func (f *Forwarder) xclient(c *conn, cl *Client, reused bool) (refused error, fail *failure) {
	for _, l := range clientLines("XCLIENT", c.xclient, cl) {
		r, err := c.command(f.s.CommandTimeout, l)
		if err != nil {
			c.unusable = true
			return nil, &failure{host: c.host, kind: failBroken, stale: reused && !timedOut(err), err: err}
		}
		if r.Code != 220 {
			if c.switched {
				// Half switched: the session is no one's to use.
				c.unusable = true
				return nil, &failure{host: c.host, kind: failBroken, err: fmt.Errorf("XCLIENT %w", r)}
			}
			return fmt.Errorf("XCLIENT %w", r), nil
		}
		c.switched = true
	}
	if !c.switched {
		return nil, nil
	}
	name := cl.Helo
	if name == unavailable {
		name = f.s.Helo
	}
	return nil, f.helloAs(c, name)
}

// writeXforward writes the XFORWARD lines for env's client, which go
// before MAIL (after RSET: a transaction's XFORWARD attributes end with
// it), and returns how many replies to read.
func (f *Forwarder) writeXforward(c *conn, env *Envelope) int {
	lines := clientLines("XFORWARD", c.ext["XFORWARD"], env.Client)
	for _, l := range lines {
		c.bw.WriteString(l)
		c.bw.WriteString("\r\n")
	}
	return len(lines)
}

// readXforward reads n replies to XFORWARD. A refusal is no failure (the
// next hop logs loopmx as the client): it is returned for the log.
func readXforward(c *conn, n int, d time.Duration) (refused, err error) {
	for range n {
		r, err := c.read(d, nil)
		if err != nil {
			return nil, err
		}
		if r.Class() != 2 && refused == nil {
			refused = fmt.Errorf("XFORWARD %w", r)
		}
	}
	return refused, nil
}
