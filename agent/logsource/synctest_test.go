package logsource

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"
)

// TestFileRotateGrace, in a synctest bubble (fake clock, polling): after a
// rename the old file is still read, the new one only once the old has
// been idle for RotateGrace, and a writer that never goes idle holds the
// new file back at most MaxRotateWait.
func create(t *testing.T, path string) *os.File {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o644)
	must(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

func writeLines(t *testing.T, f *os.File, from, to int) {
	for i := from; i < to; i++ {
		_, err := f.WriteString(line(i) + "\n")
		must(t, err)
	}
}

func TestFileRotateGrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "auth.log")
		w := newWriter(t, path)
		w.write(10)
		src, err := NewFile(FileOptions{Path: path, Backlog: -1, NoNotify: true, Poll: 100 * time.Millisecond, RotateGrace: time.Second})
		must(t, err)
		c := &collector{}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { src.Run(ctx, c.emit); close(done) }()
		defer func() { cancel(); <-done }()

		synctest.Wait()
		if c.n() != 10 {
			t.Fatalf("start: %d lines", c.n())
		}
		must(t, os.Rename(path, path+".1"))
		a := w.f // the renamed file, still open for writing
		b := create(t, path)
		writeLines(t, b, 10, 15) // into the new file
		writeLines(t, a, 15, 18) // into the old one, after the rename
		time.Sleep(200 * time.Millisecond)
		synctest.Wait()
		if c.n() != 13 {
			t.Fatalf("after rename: %d lines, want the 13 of the old file", c.n())
		}
		time.Sleep(700 * time.Millisecond) // 0.9 s since the old file last grew
		synctest.Wait()
		if c.n() != 13 {
			t.Fatalf("within the grace: %d lines", c.n())
		}
		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		if c.n() != 18 {
			t.Fatalf("after the grace: %d lines, want 18", c.n())
		}
		got := c.snapshot()
		if got[12].Text != line(17) || got[13].Text != line(10) || got[13].Pos.Inode == got[12].Pos.Inode {
			t.Errorf("order across the rotation: %q then %q", got[12].Text, got[13].Text)
		}

		// A writer that never reopens: the new file waits MaxRotateWait.
		must(t, os.Rename(path, path+".2"))
		nf := create(t, path)
		writeLines(t, nf, 1000, 1001)
		start := time.Now()
		next := 100
		for time.Since(start) < MaxRotateWait-time.Second {
			writeLines(t, b, next, next+1)
			next++
			time.Sleep(500 * time.Millisecond)
			synctest.Wait()
		}
		if got := c.snapshot(); got[len(got)-1].Text == line(1000) {
			t.Fatalf("new file read %v after the rotation, before MaxRotateWait", time.Since(start))
		}
		for time.Since(start) < MaxRotateWait+time.Second {
			writeLines(t, b, next, next+1)
			next++
			time.Sleep(500 * time.Millisecond)
			synctest.Wait()
		}
		if got := c.snapshot(); got[len(got)-1].Text != line(1000) {
			t.Fatalf("new file not read %v after the rotation", time.Since(start))
		}
		if st := src.Stats(); st.Rotations != 2 {
			t.Errorf("rotations = %d", st.Rotations)
		}
	})
}
