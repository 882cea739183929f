//go:build !unix && !windows

package sqlite

import (
	"context"
	"errors"
)

func lockFile(context.Context, string) (func(context.Context) error, error) {
	return nil, errors.New("sqlite: migration locking is not supported on this platform")
}
