//go:build !(linux || darwin || freebsd)

package hub

import "context"

// lockBlob is a no-op where flock(2) is missing: concurrent writers of one blob are
// caught by the checksum instead.
func lockBlob(ctx context.Context, path string, onWait func()) (unlock func(), err error) {
	return func() {}, nil
}
