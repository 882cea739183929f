package sqldlm

import "sync"

// waiters lets a release in this process, or a notification from the
// database, wake the goroutines waiting for a name at once: the one request
// a notification names, the longest-waiting one of the name, or all of them.
// A notification may also carry a grant (a handover), which the request
// then takes without asking the database again.
type waiters struct {
	mu     sync.Mutex
	byName map[string][]*waiter // per name, in order of registration
	// observers of a name (ObserveLeader, a semaphore's head) are pinged by every wake-up of
	// the name but never take one from a waiter.
	observers map[string]map[chan struct{}]struct{}
}

// waiter is one request waiting for a name.
type waiter struct {
	id int64 // the request's id
	ch chan wakeup
}

// wakeup is what a waiter is woken with: nothing (try again), or a grant
// made on its behalf, committed, under lease with token.
type wakeup struct {
	lease int64
	token int64
}

// grants reports whether v carries a grant made under lease l. (A grant
// under an earlier lease of the same request is void with that lease.)
func (v wakeup) grants(l *lease) bool { return v.token != 0 && v.lease == l.id }

func newWaiters() *waiters {
	return &waiters{byName: map[string][]*waiter{}, observers: map[string]map[chan struct{}]struct{}{}}
}

// observe returns a channel that receives a value whenever a waiter of
// one of names is woken (a release, a notification), and a function to
// stop.
func (w *waiters) observe(names ...string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	for _, name := range names {
		if w.observers[name] == nil {
			w.observers[name] = map[chan struct{}]struct{}{}
		}
		w.observers[name][ch] = struct{}{}
	}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, name := range names {
			delete(w.observers[name], ch)
			if len(w.observers[name]) == 0 {
				delete(w.observers, name)
			}
		}
	}
}

// ping wakes name's observers; the caller holds w.mu.
func (w *waiters) ping(name string) {
	for ch := range w.observers[name] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// register returns a channel that receives a value when request id may be
// granted name, and a function to stop listening.
func (w *waiters) register(name string, id int64) (<-chan wakeup, func()) {
	me := &waiter{id: id, ch: make(chan wakeup, 1)}
	w.mu.Lock()
	w.byName[name] = append(w.byName[name], me)
	w.mu.Unlock()
	return me.ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		list := w.byName[name]
		for i, x := range list {
			if x == me {
				list = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(w.byName, name)
		} else {
			w.byName[name] = list
		}
	}
}

// wake hands v to the waiter without blocking. A pending wake-up that
// carries no grant is replaced by one that does; a grant is never replaced
// by a plain wake-up. Callers hold the waiters' mutex, so x has one sender
// at a time.
func (x *waiter) wake(v wakeup) {
	for {
		select {
		case x.ch <- v:
			return
		default:
		}
		select {
		case old := <-x.ch:
			if v.token == 0 {
				v = old
			}
		default:
		}
	}
}

// wake wakes every waiter of name; it never blocks.
func (w *waiters) wake(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ping(name)
	for _, x := range w.byName[name] {
		x.wake(wakeup{})
	}
}

// wakeHead wakes the waiter of name that registered first (in this
// process, the one most likely at the head of the name's queue), after a
// release: waking the others would only have them asked again to wait.
func (w *waiters) wakeHead(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ping(name)
	if list := w.byName[name]; len(list) > 0 {
		list[0].wake(wakeup{})
	}
}

// wakeRequest wakes the waiter of name with request id, if it waits in
// this process, with v.
func (w *waiters) wakeRequest(name string, id int64, v wakeup) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ping(name)
	for _, x := range w.byName[name] {
		if x.id == id {
			x.wake(v)
		}
	}
}

// wakeAll wakes every waiter (when notifications may have been missed).
func (w *waiters) wakeAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for name := range w.observers {
		w.ping(name)
	}
	for _, list := range w.byName {
		for _, x := range list {
			x.wake(wakeup{})
		}
	}
}
