package sqldlm

import "errors"

// Sentinel errors. Match them with errors.Is.
var (
	// ErrSchema is returned by [New] when sqldlm's tables are missing from
	// the database or are at a schema version this build does not use. The
	// message says which, and how to migrate.
	ErrSchema = errors.New("sqldlm: schema not usable")

	// ErrClosed is returned by every method of a [Client] after
	// [Client.Close].
	ErrClosed = errors.New("sqldlm: client closed")
)
