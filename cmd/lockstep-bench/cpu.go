package main

import (
	"fmt"
	"time"
)

// machineBusy returns the CPU time every CPU spent doing anything but idle
// or waiting for I/O (guest time is already in user time), from /proc/stat.
func machineBusy() (time.Duration, bool) {
	st, err := proc.Stat()
	if err != nil {
		return 0, false
	}
	c := st.CPUTotal
	return seconds(c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ + c.Steal), true
}

// processCPU returns a process's user and system CPU time.
func processCPU(pid int) (time.Duration, bool) {
	p, err := proc.Proc(pid)
	if err != nil {
		return 0, false
	}
	st, err := p.Stat()
	if err != nil {
		return 0, false
	}
	return seconds(st.CPUTime()), true
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// CPU is what a phase cost in CPU time, per request (or transaction).
type CPU struct {
	Machine time.Duration // every CPU's busy time: the database, the kernel, lockstep, the load, other tenants
	Process time.Duration // the lockstep process (in-process: with the load generator), or pgbench's client
	DB      time.Duration // the PostgreSQL backends serving it (0 when the database is not on this machine)
}

// Own is the CPU spent by the process and its database backends: unlike
// Machine, it leaves out whatever else runs on the machine.
func (c CPU) Own() time.Duration {
	if c.Process <= 0 || c.DB <= 0 {
		return 0
	}
	return c.Process + c.DB
}

type cpuMark struct {
	machine, proc time.Duration
	okM, okP      bool
}

func markCPU(pid int) cpuMark {
	var m cpuMark
	m.machine, m.okM = machineBusy()
	if pid > 0 {
		m.proc, m.okP = processCPU(pid)
	}
	return m
}

// cpuSum adds up the CPU spent over several phases.
type cpuSum struct {
	machine, proc, db time.Duration
	badM, badP, noDB  bool
}

func (s *cpuSum) addDB(d time.Duration, ok bool) {
	s.db += d
	if !ok {
		s.noDB = true
	}
}

func (s *cpuSum) add(start, end cpuMark) {
	if start.okM && end.okM {
		s.machine += end.machine - start.machine
	} else {
		s.badM = true
	}
	if start.okP && end.okP {
		s.proc += end.proc - start.proc
	} else {
		s.badP = true
	}
}

func (s *cpuSum) perRequest(n int) CPU {
	var c CPU
	if n <= 0 {
		return c
	}
	if !s.badM {
		c.Machine = s.machine / time.Duration(n)
	}
	if !s.badP {
		c.Process = s.proc / time.Duration(n)
	}
	if !s.noDB {
		c.DB = s.db / time.Duration(n)
	}
	return c
}

func usString(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}
