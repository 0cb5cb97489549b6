(function(){
function browser(box){
  var data=JSON.parse(box.querySelector('script.epoch-data').textContent);
  var slider=box.querySelector('input.epoch-slider'),label=box.querySelector('.epoch-label');
  var figs=box.querySelectorAll('figure[data-fig]'),rows=box.querySelectorAll('tr[data-epoch]');
  var n=data.epochs.length;
  function srcs(i){var out=[];Object.keys(data.figures).forEach(function(k){var e=data.figures[k][String(data.epochs[i])];if(e)out.push(e.src);});return out;}
  function show(i){
    i=Math.max(0,Math.min(n-1,i));slider.value=i;var e=String(data.epochs[i]);
    label.textContent='epoch '+e+' ('+(i+1)+' of '+n+')';
    figs.forEach(function(f){
      var entry=data.figures[f.getAttribute('data-fig')][e],img=f.querySelector('img');
      f.querySelector('.absent').hidden=!!entry;img.hidden=!entry;
      if(entry){if(img.getAttribute('src')!==entry.src)img.setAttribute('src',entry.src);img.alt=f.getAttribute('data-fig')+' at epoch '+e;
        f.querySelector('figcaption').textContent=entry.caption;}
    });
    rows.forEach(function(r){r.classList.toggle('current',r.getAttribute('data-epoch')===e);});
    [i-1,i+1].forEach(function(j){if(j>=0&&j<n)srcs(j).forEach(function(s){(new Image()).src=s;});});
  }
  slider.addEventListener('input',function(){show(+slider.value);});
  box.querySelector('.prev').addEventListener('click',function(){show(+slider.value-1);});
  box.querySelector('.next').addEventListener('click',function(){show(+slider.value+1);});
  show(+slider.value);
}
document.querySelectorAll('.epochs').forEach(browser);
function key(td){return td?td.getAttribute('data-v'):'';}
document.querySelectorAll('table.sortable').forEach(function(t){
  var ths=t.tHead.rows[0].cells;
  Array.prototype.forEach.call(ths,function(th,i){th.addEventListener('click',function(){
    var asc=th.getAttribute('data-dir')!=='asc';
    Array.prototype.forEach.call(ths,function(o){o.removeAttribute('data-dir');});
    th.setAttribute('data-dir',asc?'asc':'desc');
    var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=key(a.cells[i]),y=key(b.cells[i]);
      if(x===''||y==='')return x===y?0:(x===''?1:-1);
      var nx=parseFloat(x),ny=parseFloat(y),c;
      c=(!isNaN(nx)&&!isNaN(ny)&&String(nx)!=='NaN'&&/^[-+0-9.eE]+$/.test(x)&&/^[-+0-9.eE]+$/.test(y))?nx-ny:x.localeCompare(y,undefined,{numeric:true});
      return asc?c:-c;});
    rows.forEach(function(r){body.appendChild(r);});
  });});
});
function pick(run){document.querySelectorAll('svg.chart .series[data-run]').forEach(function(s){
  var me=s.getAttribute('data-run')===run;s.classList.toggle('dim',run!==null&&!me);s.classList.toggle('hl',run!==null&&me);});}
document.querySelectorAll('tr[data-run],ul.legend li[data-run]').forEach(function(el){
  el.addEventListener('mouseenter',function(){pick(el.getAttribute('data-run'));});
  el.addEventListener('mouseleave',function(){pick(null);});
});
})();
