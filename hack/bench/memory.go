package main

import (
	"context"
	"sync"
	"time"
)

// memory is what the sampler saw of the operator's memory.
type memory struct {
	peakRSS       uint64 // VmHWM when the measurement ended
	rssAnon       uint64 // RssAnon (heap, stacks) when the measurement ended
	rssFile       uint64 // RssFile (the mapped binary) when the measurement ended
	peakHeapInuse uint64 // the largest go_memstats_heap_inuse_bytes sampled
	peakHeapAlloc uint64 // the largest go_memstats_heap_alloc_bytes sampled
	lastHeapAlloc uint64 // go_memstats_heap_alloc_bytes at the last sample
	samples       int
}

type memorySampler struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	m      memory
	once   sync.Once
}

// sampleMemory scrapes the operator's heap metrics every interval until stop.
func (p *operatorProc) sampleMemory(ctx context.Context, interval time.Duration) *memorySampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &memorySampler{cancel: cancel}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for {
			s.sample(ctx, p)
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
		}
	}()
	return s
}

func (s *memorySampler) sample(ctx context.Context, p *operatorProc) {
	m, err := p.metrics(ctx, "go_memstats_heap_inuse_bytes", "go_memstats_heap_alloc_bytes")
	if err != nil {
		return // the operator is stopping, or busy; the next sample will tell
	}
	inuse := uint64(m.Sum("go_memstats_heap_inuse_bytes", nil))
	alloc := uint64(m.Sum("go_memstats_heap_alloc_bytes", nil))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m.peakHeapInuse = max(s.m.peakHeapInuse, inuse)
	s.m.peakHeapAlloc = max(s.m.peakHeapAlloc, alloc)
	s.m.lastHeapAlloc = alloc
	s.m.samples++
}

// stop ends the sampling and returns what it saw.
func (s *memorySampler) stop() memory {
	s.once.Do(func() {
		s.cancel()
		s.wg.Wait()
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m
}
