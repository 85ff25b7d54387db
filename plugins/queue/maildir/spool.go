package maildir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"loopmx/config"
)

// Permission bits as they appear in each of the owner, group and other
// triplets of a mode.
const (
	permWrite  = 0o2
	permSearch = 0o1
)

// checkSpool tells, without changing anything, whether acct can deliver
// into the Maildir at dir: every directory above it must be searchable by
// acct, tmp/ and new/ writable, and whatever is missing creatable by acct
// in the nearest directory that exists. It returns a sentence for
// check-config, or an error that says what is wrong and how to fix it.
// It reads mode bits and owners; access control lists are not consulted
// (Start checks again with the kernel's own answer).
func checkSpool(dir string, acct config.Account) (string, error) {
	dir = filepath.Clean(dir)
	have := dir
	for {
		_, err := os.Stat(have)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || filepath.Dir(have) == have {
			return "", err
		}
		have = filepath.Dir(have)
	}
	for p := filepath.Dir(have); ; p = filepath.Dir(p) {
		if err := need(p, acct, permSearch); err != nil {
			return "", fmt.Errorf("%w; the spool must be reachable by the user the server runs as", err)
		}
		if filepath.Dir(p) == p {
			break
		}
	}
	if have != dir {
		if err := need(have, acct, permWrite|permSearch); err != nil {
			return "", fmt.Errorf("%s does not exist and %s cannot create it: %w; fix: install -d -o %s -m 0750 %s",
				dir, acct, err, acct.Name, dir)
		}
		return fmt.Sprintf("the spool %s does not exist; it will be created by %s at start", dir, acct), nil
	}
	if err := need(dir, acct, permSearch); err != nil {
		return "", fmt.Errorf("%w; fix: chown -R %s: %s", err, acct.Name, dir)
	}
	var missing []string
	for _, sub := range []string{"tmp", "new", "cur"} {
		p := filepath.Join(dir, sub)
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, sub+"/")
			continue
		}
		want := uint32(permSearch)
		if sub != "cur" {
			want |= permWrite // deliveries are written in tmp/ and renamed into new/
		}
		if err := need(p, acct, want); err != nil {
			return "", fmt.Errorf("%w; fix: chown -R %s: %s", err, acct.Name, dir)
		}
	}
	if len(missing) > 0 {
		if err := need(dir, acct, permWrite|permSearch); err != nil {
			return "", fmt.Errorf("%w; fix: chown -R %s: %s", err, acct.Name, dir)
		}
		return fmt.Sprintf("the spool %s is writable by %s; its %s will be created by %s at start",
			dir, acct, strings.Join(missing, ", "), acct), nil
	}
	return fmt.Sprintf("the spool %s is writable by %s", dir, acct), nil
}

// need checks that the directory p grants acct the permission bits want
// (permWrite, permSearch) and, for writing, that its file system is not
// mounted read-only. Its error says what is wrong, not how to fix it.
func need(p string, acct config.Account, want uint32) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", p)
	}
	if want&permWrite != 0 {
		if readOnlyFS(p) {
			return fmt.Errorf("%s is on a read-only file system", p)
		}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || acct.UID == 0 || grants(st, acct, want) {
		return nil
	}
	what := "writable"
	if want&permWrite == 0 {
		what = "searchable (x)"
	}
	return fmt.Errorf("%s is not %s by %s (owner uid %d, gid %d, mode %s)", p, what, acct, st.Uid, st.Gid, fi.Mode())
}

// grants applies the mode bits of st the way the kernel does: the owner
// triplet for the owner, else the group triplet for a member of the
// file's group, else the other triplet.
func grants(st *syscall.Stat_t, acct config.Account, want uint32) bool {
	mode := uint32(st.Mode) & 0o777
	switch {
	case int(st.Uid) == acct.UID:
		mode >>= 6
	case int(st.Gid) == acct.GID || slices.Contains(acct.Groups, int(st.Gid)):
		mode >>= 3
	}
	return mode&want == want
}
