package plugins

import "github.com/rs/zerolog"

// TLSVersionName names a TLS version as OpenSSL writes it (TLSv1.2,
// TLSv1.3), as Received headers, rspamd's TLS-Version header and
// Sendmail's {tls_version} macro show it.
func TLSVersionName(v uint16) string { return tlsVersionName(v) }

var nopLogger = zerolog.Nop()

// Logger is the connection's logger, or one that drops everything when
// the host set none (as in unit tests).
func (c *Conn) Logger() *zerolog.Logger {
	if c.Log == nil {
		return &nopLogger
	}
	return c.Log
}
