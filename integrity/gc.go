package integrity

import (
	"runtime/debug"
	"sync"
)

// checkGCPercent is the garbage collector's GOGC while the monitor reads
// the package database and runs a full check. Such a check makes about
// 200 bytes of garbage per file (names, directory entries) next to a
// baseline that stays live (about 250 bytes per file): with Go's default
// of 100 the heap grows to twice the baseline before each collection,
// which was most of the 65 MiB peak at 100,000 files. At 10 the
// collector runs after every tenth of the live heap in new allocations;
// the garbage is short-lived, so each cycle costs the marking of the
// baseline (a few ms), a few times per check.
const checkGCPercent = 10

// gcTight holds GOGC at checkGCPercent while at least one full check runs
// in the process (GOGC is the process's: monitors count their checks
// here so that the last one out restores it).
var gcTight struct {
	mu  sync.Mutex
	n   int
	old int
}

// tightGC lowers GOGC for a full check and returns what restores it. A
// GOGC already lower (or off) is left alone.
func tightGC() func() {
	gcTight.mu.Lock()
	defer gcTight.mu.Unlock()
	if gcTight.n == 0 {
		gcTight.old = debug.SetGCPercent(checkGCPercent)
		if gcTight.old >= 0 && gcTight.old <= checkGCPercent {
			debug.SetGCPercent(gcTight.old)
		}
	}
	gcTight.n++
	var once sync.Once
	return func() {
		once.Do(func() {
			gcTight.mu.Lock()
			defer gcTight.mu.Unlock()
			if gcTight.n--; gcTight.n == 0 {
				debug.SetGCPercent(gcTight.old)
			}
		})
	}
}
