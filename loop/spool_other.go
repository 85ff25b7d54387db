//go:build !linux

package loop

import "os"

// openSpool makes a spool file in spool_dir and unlinks it at once.
func (s *Server) openSpool() (*os.File, error) { return openSpool(s.spoolDir) }

func openSpool(dir string) (*os.File, error) { return openSpoolFallback(dir) }
