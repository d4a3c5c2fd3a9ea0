package hostcheck

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"
)

func isCertName(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".pem", ".crt", ".cer":
		return true
	}
	return false
}

// leaf returns the first certificate in a PEM file.
func leaf(b []byte) *x509.Certificate {
	for len(b) > 0 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil
		}
		return c
	}
	return nil
}

func (r *run) certs(ctx context.Context) {
	r.walk(ctx, r.cfg.CertPaths, 0, "certificate", func(path string, fi fs.FileInfo) {
		if !isCertName(path) {
			return
		}
		c := leaf(head(path, fi))
		if c == nil {
			return
		}
		left := c.NotAfter.Sub(r.now)
		name := c.Subject.CommonName
		if name == "" && len(c.DNSNames) > 0 {
			name = c.DNSNames[0]
		}
		switch {
		case left <= 0:
			r.add(Finding{ID: "tls-cert-expired", Severity: SevHigh, Path: path,
				Message: fmt.Sprintf("certificate %q expired on %s", name, c.NotAfter.UTC().Format(time.DateOnly)),
				Fix:     "renew it (certbot renew, or your CA) and reload the service using it"})
		case left <= r.cfg.CertWarn.D():
			days := int(left.Hours() / 24)
			r.add(Finding{ID: "tls-cert-expiring", Severity: SevMedium, Path: path,
				Message: fmt.Sprintf("certificate %q expires in %d days (%s)", name, days, c.NotAfter.UTC().Format(time.DateOnly)),
				Fix:     "renew it (certbot renew, or your CA) and reload the service using it; check that automatic renewal runs"})
		}
	})
}
