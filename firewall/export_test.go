package firewall

// UseDeleteAdd makes Block replace elements with add+delete+add, as it does
// on kernels older than 6.10, so the tests cover that path on any kernel.
func UseDeleteAdd(f *NFT) { f.probed, f.canUpdate = true, false }

// UpdatesTimeouts exposes the probe's answer.
func UpdatesTimeouts(f *NFT) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.updatesTimeouts()
}
