#!/usr/bin/env node
// The `anneal` command line (`anneal --help`): the Rust CLI, run through the native binding.
'use strict'

const { cliMain } = require('..')

process.exitCode = cliMain(process.argv.slice(2))
