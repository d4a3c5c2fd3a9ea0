package store

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// CorruptError says the store file cannot be trusted: bbolt's meta pages,
// page structure or free pages are inconsistent, or a record does not
// decode. It unwraps to ErrCorrupt and to the underlying cause.
type CorruptError struct {
	Path    string
	Problem string // what was found, one line
	Err     error  // the underlying error, if any
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("store %s is corrupt: %s", e.Path, e.Problem)
}

// Unwrap returns ErrCorrupt and the cause.
func (e *CorruptError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrCorrupt}
	}
	return []error{ErrCorrupt, e.Err}
}

// maxProblems bounds how many of bbolt's consistency findings are kept.
const maxProblems = 5

// corruptErr turns bbolt's error for a file it cannot read into a
// CorruptError; other errors pass through.
func corruptErr(path string, err error) error {
	for _, c := range []error{berrors.ErrInvalid, berrors.ErrVersionMismatch, berrors.ErrChecksum, berrors.ErrInvalidMapping} {
		if errors.Is(err, c) {
			return &CorruptError{Path: path, Problem: "meta pages: " + err.Error(), Err: err}
		}
	}
	return err
}

// recovered converts a panic of bbolt (an assertion on a bad page, or a
// memory fault on a page outside the file) into a CorruptError.
func recovered(path string, r any) error {
	err, ok := r.(error)
	if !ok {
		err = fmt.Errorf("%v", r)
	}
	return &CorruptError{Path: path, Problem: "bbolt: " + oneLine(err.Error()), Err: err}
}

// check opens path read-only and proves it readable before the read-write
// open (which, with NoFreelistSync, walks every page to rebuild the free
// list and panics on a bad one): the file must hold every page its meta
// page counts, every bucket, key and value must be readable, and bbolt's
// consistency check (tx.Check) must find nothing. bbolt panics on bad
// pages and faults on pages outside the mapping; both are recovered here
// (this goroutine panics on faults for the duration) and reported as a
// CorruptError. A missing or empty file passes (Open creates it).
func check(path string, opts bolt.Options) (err error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) || (err == nil && fi.Size() == 0) {
		return nil
	}
	if err != nil {
		return err
	}
	opts.ReadOnly = true
	var db *bolt.DB
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = recovered(path, r)
			// The mapping may be in an odd state; the descriptor and
			// shared lock are released by closing if we got that far.
			if db != nil {
				func() {
					defer func() { _ = recover() }()
					_ = db.Close()
				}()
			}
		}
	}()
	db, err = bolt.Open(path, 0o600, &opts)
	if err != nil {
		return corruptErr(path, err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		if need := tx.Size(); need > fi.Size() {
			return &CorruptError{Path: path, Problem: fmt.Sprintf("truncated: the file is %d bytes, its meta page needs %d", fi.Size(), need)}
		}
		if err := walk(tx); err != nil {
			return &CorruptError{Path: path, Problem: err.Error(), Err: err}
		}
		var problems []string
		n := 0
		for e := range tx.Check() { // drain: the checker's goroutine ends with the channel
			if n++; len(problems) < maxProblems {
				problems = append(problems, oneLine(e.Error()))
			}
		}
		if n > 0 {
			p := strings.Join(problems, "; ")
			if n > len(problems) {
				p += fmt.Sprintf("; and %d more", n-len(problems))
			}
			return &CorruptError{Path: path, Problem: "consistency check: " + p}
		}
		return nil
	})
	cerr := db.Close()
	db = nil
	if err != nil {
		return err
	}
	return cerr
}

// walk reads every bucket, key and value, so that every page is touched
// in this goroutine (where a fault is a recoverable panic) before bbolt's
// checker touches it in its own.
func walk(tx *bolt.Tx) error {
	var sum byte // what the value reads add up to; keeps them from being dropped
	var visit func(b *bolt.Bucket, depth int) error
	visit = func(b *bolt.Bucket, depth int) error {
		if depth > 8 {
			return errors.New("buckets nested deeper than parry writes")
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			for _, x := range v { // touch every byte: values may span overflow pages
				sum ^= x
			}
			if v == nil {
				child := b.Bucket(k)
				if child == nil {
					return fmt.Errorf("key %x has no value and is not a bucket", k)
				}
				if err := visit(child, depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err := tx.ForEach(func(name []byte, b *bolt.Bucket) error { return visit(b, 0) })
	runtime.KeepAlive(sum)
	return err
}

func oneLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
