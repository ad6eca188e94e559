package main

import (
	"context"
	"time"
)

// cycle is what one steady-state refresh cycle cost: every selector refreshed once.
type cycle struct {
	duration time.Duration // from the end of the warm-up cycle to the end of the measured one
	// longestGap is the longest time one selector took from its first refresh to its second.
	longestGap time.Duration
	kmsCalls   int         // KMS calls of the measured cycle, attributed by filter
	kmsTotal   int64       // every call the emulator counted in the window
	writes     writeCounts // API writes in the window, by resource, as the API server counted them
	// operatorWrites are the write requests the operator sent the API server in the window,
	// whatever the resource: what the naive baseline's writes compare with.
	operatorWrites int
	cpu            cpuTimes // CPU time of each process in the window
	// operatorConfigMapWrites is the operator's own kms_key_sync_configmap_writes_total delta:
	// writes of selectors' ConfigMaps, without the refresh checkpoint, which the API server's
	// count of ConfigMaps includes.
	operatorConfigMapWrites int
}

func cycleTimeout(sc scenario) time.Duration { return 6*sc.refresh + time.Minute }

// measureCycle waits for two refreshes of every selector after its first sync, and measures the
// second. The first is a warm-up: the first refresh after a first sync comes half an interval to
// an interval and a half later, only then do refreshes follow their slots.
//
// A refresh is dated when the tracker's sample of the operator's last-sync gauge showed it, up
// to a twentieth of the interval late, so the cycle's length is as exact as that.
//
// The KMS calls of the measured cycle are, for each filter, the calls made after every selector
// asking for it had refreshed once and until every one had refreshed twice: exact whatever the
// phases. The API writes are the API server's counters between the moments the last selector
// refreshed once and twice; a selector whose slot falls right at the edges may be counted twice
// or not at all.
func measureCycle(ctx context.Context, sc scenario, cl *cluster, emu *emulator, tr *tracker, op *operatorProc, cpu cpuMeter) (cycle, error) {
	var c cycle
	progress("waiting for every selector to refresh once (warm-up cycle)")
	warm, err := tr.waitFor(ctx, cycleTimeout(sc), "refreshed once", nthRefresh(1))
	if err != nil {
		return c, err
	}
	cmBefore, err := op.counter(ctx, "kms_key_sync_configmap_writes_total")
	if err != nil {
		return c, err
	}
	opBefore, err := op.apiWrites(ctx)
	if err != nil {
		return c, err
	}
	before, err := cl.apiWrites(ctx)
	if err != nil {
		return c, err
	}
	cpuBefore := cpu.read()
	emu.ResetStats()
	progress("measuring the next refresh cycle")
	end, err := tr.waitFor(ctx, cycleTimeout(sc), "refreshed twice", nthRefresh(2))
	if err != nil {
		return c, err
	}
	c.cpu = cpu.read().sub(cpuBefore)
	after, err := cl.apiWrites(ctx)
	if err != nil {
		return c, err
	}
	cmAfter, err := op.counter(ctx, "kms_key_sync_configmap_writes_total")
	if err != nil {
		return c, err
	}
	opAfter, err := op.apiWrites(ctx)
	if err != nil {
		return c, err
	}
	c.duration = end.Sub(warm)
	c.longestGap = tr.longestGap(1)
	c.kmsTotal = emu.Stats().Total
	c.kmsCalls = emu.callsBetween(tr.cutoffs(nthRefresh(1)), tr.cutoffs(nthRefresh(2)))
	c.writes = after.sub(before)
	c.operatorConfigMapWrites = int(cmAfter - cmBefore)
	c.operatorWrites = opAfter - opBefore
	progress("cycle of %s: %d KMS calls (%d in the whole window), %d writes by the operator; the API server's: %s",
		c.duration.Round(100*time.Millisecond), c.kmsCalls, c.kmsTotal, c.operatorWrites, c.writes)
	return c, nil
}
