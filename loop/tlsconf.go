package loop

import (
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"loopmx/config"
	"loopmx/internal/ticketkeys"
)

// TLSConfig is the server side of STARTTLS and implicit TLS, read from
// tls.ini. The certificates can be reloaded (HUP) while connections are
// open: new handshakes use the new ones.
type TLSConfig struct {
	file             string
	certFiles        []string
	keyFiles         []string
	certs            atomic.Pointer[[]tls.Certificate]
	HandshakeTimeout time.Duration
	// Tickets says where the session-ticket keys come from (tls.ini
	// session_tickets, ticket_key_*); the caller installs them with
	// SetTicketKeys.
	Tickets ticketkeys.Policy
	conf    *tls.Config
}

var tlsVersions = map[string]uint16{
	"1.0": tls.VersionTLS10, "1.1": tls.VersionTLS11, "1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13,
}

// LoadTLS reads tls.ini. It returns nil, nil when there is no certificate
// configured: STARTTLS is then not offered.
func LoadTLS(cfg *config.Config) (*TLSConfig, error) {
	pc, err := cfg.Plugin("tls")
	if err != nil {
		return nil, err
	}
	certs := pc.Strings("", "cert", nil)
	keys := pc.Strings("", "key", nil)
	minV := pc.String("", "min_version", "1.2")
	ciphers := pc.Strings("", "ciphers", nil)
	askCert := pc.Bool("", "request_client_cert", false)
	hs := pc.Duration("", "handshake_timeout", 30*time.Second)
	tickets, terr := ticketkeys.ReadPolicy(pc)
	if err := pc.Check(); err != nil {
		return nil, err
	}
	if terr != nil {
		return nil, terr
	}
	if len(certs) == 0 && len(keys) == 0 {
		return nil, nil
	}
	if len(certs) != len(keys) {
		return nil, fmt.Errorf("config: tls.ini: cert and key: %d certificates but %d keys (list them in pairs)", len(certs), len(keys))
	}
	t := &TLSConfig{file: pc.File(), HandshakeTimeout: hs, Tickets: tickets}
	for i := range certs {
		t.certFiles = append(t.certFiles, cfg.Path(certs[i]))
		t.keyFiles = append(t.keyFiles, cfg.Path(keys[i]))
	}
	v, ok := tlsVersions[minV]
	if !ok {
		return nil, fmt.Errorf("config: tls.ini: min_version: %q is not one of 1.0, 1.1, 1.2, 1.3", minV)
	}
	conf := &tls.Config{MinVersion: v, GetCertificate: t.getCertificate, SessionTicketsDisabled: tickets.Disabled}
	if askCert {
		conf.ClientAuth = tls.RequestClientCert
	}
	if len(ciphers) > 0 {
		byName := map[string]uint16{}
		for _, cs := range tls.CipherSuites() {
			byName[cs.Name] = cs.ID
		}
		for _, cs := range tls.InsecureCipherSuites() {
			byName[cs.Name] = cs.ID
		}
		for _, name := range ciphers {
			id, ok := byName[name]
			if !ok {
				return nil, fmt.Errorf("config: tls.ini: ciphers: %q is not a cipher suite Go knows", name)
			}
			conf.CipherSuites = append(conf.CipherSuites, id)
		}
	}
	t.conf = conf
	if err := t.Reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// Reload reads the certificate files again. On error the old certificates
// stay in use.
func (t *TLSConfig) Reload() error {
	var list []tls.Certificate
	for i := range t.certFiles {
		c, err := tls.LoadX509KeyPair(t.certFiles[i], t.keyFiles[i])
		if err != nil {
			return fmt.Errorf("config: tls.ini: cert %s / key %s: %w", t.certFiles[i], t.keyFiles[i], err)
		}
		list = append(list, c)
	}
	if len(list) == 0 {
		return errors.New("config: tls.ini: no certificate")
	}
	t.certs.Store(&list)
	return nil
}

// getCertificate picks the first certificate that suits the client's
// server name (SNI) and algorithms, or the first one.
func (t *TLSConfig) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	list := *t.certs.Load()
	if hello.ServerName != "" {
		for i := range list {
			if hello.SupportsCertificate(&list[i]) == nil {
				return &list[i], nil
			}
		}
	}
	return &list[0], nil
}

// Config is the crypto/tls server configuration.
func (t *TLSConfig) Config() *tls.Config { return t.conf }

// SetTicketKeys installs the session-ticket keys, the one that encrypts
// first (ticketkeys.Set.ForTLS). Handshakes that start afterwards use
// them, on every connection of the process. Without a call, crypto/tls
// makes keys of its own for this process only: a client would then resume
// only on the worker that gave it its ticket.
func (t *TLSConfig) SetTicketKeys(keys [][ticketkeys.KeySize]byte) {
	if len(keys) > 0 && !t.conf.SessionTicketsDisabled {
		t.conf.SetSessionTicketKeys(keys)
	}
}
