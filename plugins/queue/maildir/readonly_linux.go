package maildir

import "golang.org/x/sys/unix"

// readOnlyFS reports whether p is on a file system mounted read-only.
func readOnlyFS(p string) bool {
	var sfs unix.Statfs_t
	return unix.Statfs(p, &sfs) == nil && sfs.Flags&unix.ST_RDONLY != 0
}
