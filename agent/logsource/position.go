// Package logsource reads the lines parry's detectors look at: log files,
// followed across rotation, truncation and deletion, and the systemd
// journal, through journalctl. Each line carries a position the caller
// persists after handling the line; a source started from a saved position
// delivers exactly the lines after it.
//
// Lines are bounded: a line longer than MaxLine is cut to its first MaxLine
// bytes, marked Cut and counted, and the rest of it is skipped without
// being buffered.
package logsource

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"syscall"
)

// MaxLine is the default bound on a line, newline excluded (the detectors'
// bound, detect.MaxLine).
const MaxLine = 16 << 10

// FingerprintBytes is how many leading bytes of a file its fingerprint
// covers. A file shorter than that is fingerprinted over what it has.
const FingerprintBytes = 1024

// Position is where a file source resumes: the file (device and inode), the
// offset of the first byte not yet delivered, and a fingerprint of the
// file's first bytes, which tells a file that kept its inode but not its
// content (truncated and rewritten, or a reused inode) from the same file,
// and finds a copy made by logrotate's copytruncate. It is small and
// serialises to JSON; the caller stores it.
type Position struct {
	Device      uint64 `json:"dev"`
	Inode       uint64 `json:"inode"`
	Offset      int64  `json:"offset"`
	FPLen       int    `json:"fp_len"` // bytes the fingerprint covers
	Fingerprint string `json:"fp"`     // hex SHA-256 of the first FPLen bytes
}

// IsZero reports whether p is the zero position (nothing saved).
func (p Position) IsZero() bool { return p == Position{} }

// fileID returns the device and inode of an open file or a stat result.
func fileID(fi os.FileInfo) (dev, ino uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev), st.Ino
	}
	return 0, 0
}

// fingerprint hashes the first n bytes of f. ok is false when f is shorter
// than n.
func fingerprint(f *os.File, n int) (string, bool, error) {
	if n == 0 {
		return "", true, nil
	}
	buf := make([]byte, n)
	m, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", false, err
	}
	if m < n {
		return "", false, nil
	}
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:]), true, nil
}
