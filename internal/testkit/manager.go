package testkit

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// RunningManager is a controller-runtime manager running in the background, as the operator runs
// in-process in the suites and the demo.
type RunningManager struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// StartManager starts mgr in the background; Stop stops it.
func StartManager(mgr manager.Manager) *RunningManager {
	ctx, cancel := context.WithCancel(context.Background())
	r := &RunningManager{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = mgr.Start(ctx)
	}()
	return r
}

// Done is closed once the manager has stopped, whether Stop stopped it or it stopped on its own.
func (r *RunningManager) Done() <-chan struct{} { return r.done }

// Err returns what the manager's Start returned once Done is closed, and nil before.
func (r *RunningManager) Err() error {
	select {
	case <-r.done:
		return r.err
	default:
		return nil
	}
}

// Stop stops the manager, waits until it has stopped and returns what its Start returned.
func (r *RunningManager) Stop() error {
	r.cancel()
	<-r.done
	return r.err
}
