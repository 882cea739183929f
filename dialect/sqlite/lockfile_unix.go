//go:build unix

package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lockPoll is how often lockFile retries a lock held by another process.
const lockPoll = 20 * time.Millisecond

// lockFile blocks until it holds an exclusive flock on path or ctx ends. The
// kernel drops the lock when the process dies, so a crashed migrator never
// leaves it behind.
func lockFile(ctx context.Context, path string) (func(context.Context) error, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open migration lock file: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for migration lock %s: %w", path, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
	return func(context.Context) error {
		// Closing the descriptor releases the flock.
		return f.Close()
	}, nil
}
