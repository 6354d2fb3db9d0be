# wasi_thread_start(tid, start_arg): the entry of every thread spawned with wasi `thread-spawn`.
# Each thread is a new instance of the module, so its __stack_pointer starts at the main thread's
# stack top: set it to this thread's own stack (the first word of *start_arg) before any C code
# runs (a C function's prologue would already use the stack), then call thread_main(tid, start_arg).
	.globaltype __stack_pointer, i32
	.functype thread_main (i32, i32) -> ()

	.globl wasi_thread_start
	.type wasi_thread_start,@function
wasi_thread_start:
	.functype wasi_thread_start (i32, i32) -> ()
	local.get 1
	i32.load 0
	global.set __stack_pointer
	local.get 0
	local.get 1
	call thread_main
	end_function
