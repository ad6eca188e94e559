package main

import (
	"context"
	"errors"
	"path/filepath"
	"time"
)

// profiler takes the pprof profiles of the scenario named by --profile: the operator's and the
// API server's CPU from the apply on (first sync) and in the steady state, and the operator's
// heap at the end. A nil profiler takes none. Profiling slows the processes it samples, so the
// figures of a profiled scenario are not comparable with the others.
type profiler struct {
	path    func(name string) string
	cl      *cluster
	op      *operatorProc
	cpu     time.Duration // length of the first-sync profile
	steadyD time.Duration // length of the steady-state profiles
	pending []<-chan error
}

func newProfiler(o options, sc scenario, cl *cluster, op *operatorProc) *profiler {
	if o.profile != sc.name {
		return nil
	}
	return &profiler{
		path:    func(name string) string { return filepath.Join(o.outDir, sc.name+"-"+name+".pprof") },
		cl:      cl,
		op:      op,
		cpu:     o.cpuProfile,
		steadyD: 2 * sc.refresh,
	}
}

func (p *profiler) firstSync(ctx context.Context) {
	if p != nil {
		p.pending = append(p.pending,
			p.op.cpuProfile(ctx, p.path("cpu-first-sync"), p.cpu),
			p.cl.cpuProfile(ctx, p.path("apiserver-cpu-first-sync"), p.cpu))
	}
}

// steady waits for the first-sync profile (a process takes one CPU profile at a time), then
// starts the steady-state ones.
func (p *profiler) steady(ctx context.Context) error {
	if p == nil {
		return nil
	}
	if err := p.wait(); err != nil {
		return err
	}
	p.pending = append(p.pending,
		p.op.cpuProfile(ctx, p.path("cpu-steady"), p.steadyD),
		p.cl.cpuProfile(ctx, p.path("apiserver-cpu-steady"), p.steadyD))
	return nil
}

// finish waits for the CPU profiles and takes the heap profile.
func (p *profiler) finish(ctx context.Context) error {
	if p == nil {
		return nil
	}
	if err := p.wait(); err != nil {
		return err
	}
	return p.op.heapProfile(ctx, p.path("heap"))
}

func (p *profiler) wait() error {
	var errs []error
	for _, c := range p.pending {
		errs = append(errs, <-c)
	}
	p.pending = nil
	return errors.Join(errs...)
}
