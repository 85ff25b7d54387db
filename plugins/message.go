package plugins

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/mail"
	"net/textproto"
	"os"
	"slices"
	"strings"
)

// Message is what data_post and queue hooks see of a message: the body
// as received (CRLF line ends, dot-unstuffed, nothing added by loopmx),
// and the header fields plugins add in front of it.
//
// A small body is held in memory. One that grew past smtp.ini's
// spool_after was written to a spool file as it arrived, so that memory
// does not grow with the bytes in flight; hooks read either kind the same
// way, as a stream (Reader, WriteTo), and only the header is ever read
// whole (Header, HeaderBytes). A Message is valid only during the hook
// it is given to: the server releases the body when the transaction
// ends.
type Message struct {
	// Protocol is the Received "with" word (SMTP, ESMTP, UTF8SMTP, ...).
	Protocol string

	mem   []byte   // the body, when it is held in memory
	file  *os.File // the body from offset 0, when it was spooled
	size  int64
	added []byte // header fields plugins added, CRLF-terminated, in order

	removed [][2]int // header fields to leave out when written: offsets in HeaderBytes

	head      []byte // the header block (of a spooled body: read on first use)
	headRead  bool
	header    mail.Header
	parsedHdr bool
}

// NewMessage returns a message whose body is held in memory. The body is
// not copied.
func NewMessage(body []byte, protocol string) *Message {
	return NewMessageIn(new(Message), body, protocol)
}

// NewMessageIn is NewMessage in the memory of an ended message, m, which
// it overwrites; the same rule as Conn.BeginTxIn says which memory.
func NewMessageIn(m *Message, body []byte, protocol string) *Message {
	*m = Message{Protocol: protocol, mem: body, size: int64(len(body))}
	return m
}

// NewSpooledMessage returns a message whose body is the first size octets
// of f. Reads use offsets (ReadAt), never f's own position, so that
// several readers may share it.
func NewSpooledMessage(f *os.File, size int64, protocol string) *Message {
	return &Message{Protocol: protocol, file: f, size: size}
}

// Size is the message size in octets as received.
func (m *Message) Size() int64 { return m.size }

// Spooled reports whether the body is in a spool file rather than in
// memory.
func (m *Message) Spooled() bool { return m.file != nil }

// Reader returns a new reader of the body from its first octet (it also
// reads at offsets, and knows the size). Each call starts again at the
// beginning.
func (m *Message) Reader() *io.SectionReader {
	if m.file != nil {
		return io.NewSectionReader(m.file, 0, m.size)
	}
	return io.NewSectionReader(bytes.NewReader(m.mem), 0, m.size)
}

// Bytes returns the body when it is held in memory, and nil when it was
// spooled (read it with Reader or WriteTo then).
func (m *Message) Bytes() []byte {
	if m.file != nil {
		return nil
	}
	return m.mem
}

// maxHeaderRead bounds the header block read from a spooled body: a
// header larger than this is cut there for Header and HeaderBytes (the
// message itself is stored whole).
const maxHeaderRead = 1 << 20

// HeaderBytes returns the raw header block, including the blank line that
// ends it. A message without a blank line is all header.
func (m *Message) HeaderBytes() []byte {
	if m.headRead {
		return m.head
	}
	m.headRead = true
	if m.file == nil {
		m.head = m.mem[:headerEnd(m.mem)]
		return m.head
	}
	// Read growing windows until the blank line shows: most headers are a
	// few KiB, and a spooled body is megabytes.
	n := int64(16 << 10)
	for {
		n = min(n, m.size, maxHeaderRead)
		buf := make([]byte, n)
		got, err := m.file.ReadAt(buf, 0)
		buf = buf[:got]
		end := headerEnd(buf)
		if end < len(buf) || int64(got) >= min(m.size, maxHeaderRead) || err != nil {
			m.head = buf[:end]
			return m.head
		}
		n *= 4
	}
}

// Header parses the message header on first use (RFC 5322 2.2). A header
// that does not parse gives an empty map.
func (m *Message) Header() mail.Header {
	if !m.parsedHdr {
		m.parsedHdr = true
		r := textproto.NewReader(bufio.NewReader(bytes.NewReader(m.HeaderBytes())))
		h, err := r.ReadMIMEHeader()
		if err != nil && len(h) == 0 {
			h = textproto.MIMEHeader{}
		}
		m.header = mail.Header(h)
	}
	return m.header
}

// ErrBadHeaderField is returned by AddHeader for a field that would break
// the message: a name outside RFC 5322's printable set, or a value with a
// line break that does not fold.
var ErrBadHeaderField = errors.New("plugins: header field name or value is not valid RFC 5322")

// AddHeader adds the header field "name: value" in front of the message
// (after loopmx's own trace fields, which queue plugins write first). A
// value may be folded with CRLF followed by a space or a tab. Fields are
// written in the order they were added.
func (m *Message) AddHeader(name, value string) error {
	if !validFieldName(name) || !validFieldValue(value) {
		return ErrBadHeaderField
	}
	m.added = append(m.added, name...)
	m.added = append(m.added, ": "...)
	m.added = append(m.added, value...)
	m.added = append(m.added, "\r\n"...)
	return nil
}

// AddedHeaders returns the fields added by AddHeader, each ending in CRLF.
func (m *Message) AddedHeaders() []byte { return m.added }

// validFieldName: RFC 5322 3.6.8, printable US-ASCII except the colon.
func validFieldName(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

// validFieldValue allows CR and LF only as CRLF followed by white space
// (folding, RFC 5322 2.2.3), and no empty folded line.
func validFieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '\n':
			return false
		case '\r':
			if !strings.HasPrefix(v[i:], "\r\n ") && !strings.HasPrefix(v[i:], "\r\n\t") {
				return false
			}
			i++
		}
	}
	return true
}

// WriteTo writes the added header fields, then the body, to w. A
// spooled body goes from file to file inside the kernel where the system
// can (copy_file_range on Linux), without passing through this process.
func (m *Message) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(m.added)
	total := int64(n)
	if err != nil {
		return total, err
	}
	from := int64(0)
	if len(m.removed) > 0 {
		// The header block without the removed fields, then the rest.
		head := m.HeaderBytes()
		at := 0
		for _, r := range m.removed {
			n, err = w.Write(head[at:r[0]])
			total += int64(n)
			if err != nil {
				return total, err
			}
			at = r[1]
		}
		n, err = w.Write(head[at:])
		total += int64(n)
		if err != nil {
			return total, err
		}
		from = int64(len(head))
	}
	if m.file == nil {
		n, err = w.Write(m.mem[from:])
		return total + int64(n), err
	}
	if f, ok := w.(*os.File); ok {
		done, err, handled := copyFileRange(f, m.file, from, m.size-from)
		total += done
		if handled || err != nil {
			return total, err
		}
	}
	c, err := io.Copy(w, io.NewSectionReader(m.file, from, m.size-from))
	return total + c, err
}

// RemoveHeaders removes from the stored message every field of its
// header for which drop(name, value) is true (name as written, value
// unfolded and trimmed), and returns how many. The body Reader and
// HeaderBytes still show the message as received (a DKIM check needs
// it); WriteTo leaves the fields out. Fields added with AddHeader are
// not looked at. Of a spooled body only its first MiB of header is seen.
func (m *Message) RemoveHeaders(drop func(name, value string) bool) int {
	head := m.HeaderBytes()
	n := 0
	for start := 0; start < len(head); {
		end := fieldEnd(head, start)
		line := head[start:end]
		// (The blank line that ends the header has no colon.)
		if colon := bytes.IndexByte(line, ':'); colon > 0 && !m.isRemoved(start) {
			name := string(line[:colon])
			value := strings.TrimSpace(unfold(line[colon+1:]))
			if drop(name, value) {
				m.removed = append(m.removed, [2]int{start, end})
				n++
			}
		}
		start = end
	}
	slices.SortFunc(m.removed, func(a, b [2]int) int { return a[0] - b[0] })
	return n
}

// unfold joins a field's folded lines (RFC 5322 2.2.3: drop the CRLF
// before each continuation).
func unfold(v []byte) string {
	b := make([]byte, 0, len(v))
	for _, c := range v {
		if c != '\r' && c != '\n' {
			b = append(b, c)
		}
	}
	return string(b)
}

func (m *Message) isRemoved(start int) bool {
	for _, r := range m.removed {
		if r[0] == start {
			return true
		}
	}
	return false
}

// fieldEnd returns the end of the header field that starts at i: after
// its last line's LF, folded lines (starting with a space or a tab)
// included.
func fieldEnd(head []byte, i int) int {
	for {
		nl := bytes.IndexByte(head[i:], '\n')
		if nl < 0 {
			return len(head)
		}
		i += nl + 1
		if i >= len(head) || (head[i] != ' ' && head[i] != '\t') {
			return i
		}
	}
}

// Copy returns a message that shares m's body and added fields: the
// server gives a hook that overran its timeout the original, and goes on
// with the copy.
func (m *Message) Copy() *Message {
	c := *m
	c.added = c.added[:len(c.added):len(c.added)]
	c.removed = slices.Clip(c.removed)
	return &c
}

// Release drops the body. The server calls it when the transaction ends;
// a spool file is closed (it was never linked, or was unlinked, so its
// space is freed with it).
func (m *Message) Release() {
	if m.file != nil {
		m.file.Close()
		m.file = nil
	}
	m.mem = nil
}

// headerEnd finds the end of the header block: just after the first empty
// line, or the whole body when there is none.
func headerEnd(b []byte) int {
	if bytes.HasPrefix(b, []byte("\r\n")) {
		return 2
	}
	if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
		return i + 4
	}
	return len(b)
}
